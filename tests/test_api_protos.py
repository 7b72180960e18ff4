"""The proto contract: regeneration is reproducible, every field is documented, JSON keys are OpenAI's."""

from __future__ import annotations

import filecmp
import os
import re

from google.protobuf import json_format

from service.api import gen_protos
from service.api.gen.llm.v1 import chat_pb2, completions_pb2


def test_regenerating_changes_nothing(tmp_path):
    gen_protos.generate(str(tmp_path))
    committed = sorted(os.path.relpath(os.path.join(d, f), gen_protos.GEN_DIR)
                       for d, _, files in os.walk(gen_protos.GEN_DIR) for f in files if not f.endswith(".pyc"))
    fresh = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files)
    assert committed == fresh
    for rel in fresh:
        assert filecmp.cmp(os.path.join(gen_protos.GEN_DIR, rel), os.path.join(tmp_path, rel), shallow=False), rel


def test_every_field_message_and_rpc_has_a_doc_comment():
    declaration = re.compile(r"^\s*((optional|repeated)\s+)?[\w.<>, ]+\s+\w+\s*=\s*\d+;|^\s*(message|rpc|service)\s")
    undocumented = []
    for rel in gen_protos.proto_files():
        lines = open(os.path.join(gen_protos.PROTO_ROOT, rel), encoding="utf-8").read().splitlines()
        for i, line in enumerate(lines):
            if declaration.match(line) and not lines[i - 1].strip().startswith("//"):
                undocumented.append(f"{rel}:{i + 1}: {line.strip()}")
    assert undocumented == []


def test_openai_request_json_parses_and_round_trips():
    """An OpenAI chat request body (minus `stream`) is a valid ChatCompletionRequest in JSON form."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0.5,
            "top_p": 0.9, "n": 2, "stop": ["\n"], "logit_bias": {"42": -100.0}, "logprobs": True,
            "top_logprobs": 3, "seed": 7, "stream_options": {"include_usage": True}}
    msg = json_format.ParseDict(body, chat_pb2.ChatCompletionRequest())
    assert msg.logit_bias[42] == -100.0 and msg.HasField("max_tokens") and not msg.HasField("max_completion_tokens")
    back = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    assert back == {**body, "seed": "7"} or back == body  # int64 seeds are strings in proto3 JSON


def test_openai_completion_json_is_the_message_dict():
    """A text_completion object as OpenAI documents it converts to the proto and back unchanged (printing
    zero-valued fields such as index 0, as the gateway does)."""
    obj = {"id": "cmpl-1", "object": "text_completion", "created": 1764300000, "model": "m",
           "choices": [{"text": "hi", "index": 0, "finish_reason": "length",
                        "logprobs": {"tokens": ["hi"], "token_logprobs": [-0.5], "top_logprobs": [{"hi": -0.5}],
                                     "text_offset": [0]}}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}, "system_fingerprint": "fp"}
    msg = json_format.ParseDict(obj, completions_pb2.Completion())
    assert json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True) == obj
