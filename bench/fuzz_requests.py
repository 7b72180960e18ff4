"""Hypothesis strategies for every llm.v1 request, built from the proto descriptors, and the fuzz call itself.

Every field of every LLMService request message gets values: edge integers (0, -1, 2^31-1, ...), floats with
NaN/inf and values around each documented range, strings from the empty one to several KB and special tokens,
lists and maps (logit_bias), nested messages (messages, stream_options). Two shapes are mixed: raw (all
fields random: mostly refused at validation) and near-valid (a valid small request with 1-3 fields replaced:
reaches sampling and generation). A field added to a proto is fuzzed with no change here.

The only statuses a fuzzed call may end with are DOCUMENTED (DESIGN.md's error table; CANCELLED only when
the client cancels). Used by bench/soak.py (>= 10,000 requests) and tests/test_fuzz_requests.py (fewer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from service.api.gen.llm.v1 import llm_service_pb2, llm_service_pb2_grpc

SERVICE = llm_service_pb2.DESCRIPTOR.services_by_name["LLMService"]
# Statuses the API documents for a request from a client that does not cancel.
DOCUMENTED = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED",
                        "UNAVAILABLE", "UNAUTHENTICATED"})
FORBIDDEN = frozenset({"INTERNAL", "UNKNOWN"})  # a fault on the server: never acceptable

INT32_EDGES = (0, 1, -1, 2, 4, 16, 17, 20, 21, 100, 49151, 49152, 2**31 - 1, -(2**31))
INT64_EDGES = INT32_EDGES + (2**63 - 1, -(2**63), 2**53)
FLOAT_EDGES = (0.0, -0.0, 1.0, -1.0, 2.0, 2.0001, -2.0, 0.5, 1e-30, 100.0, 100.5, -100.5, 10.0, 1e30,
               math.nan, math.inf, -math.inf)
STRING_EDGES = ("", " ", "user", "system", "assistant", "tool", "developer", "SmolLM2-135M-Instruct.Q4_1",
                "\x00", "\ufffd", "é" * 3, "🦙" * 4, "<|im_start|>", "<|im_end|>", "<|endoftext|>",
                "{{ raise_exception('x') }}", "x" * 3000, "\n" * 50)


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy:
    t = fd.type
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.one_of(st.sampled_from(INT32_EDGES), st.integers(-3, 40), st.integers(-(2**31), 2**31 - 1))
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(INT64_EDGES), st.integers(-3, 40), st.integers(-(2**63), 2**63 - 1))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if t == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(-3, 3, width=width), st.floats(width=width))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(STRING_EDGES), st.text(max_size=40))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in fd.enum_type.values]), st.integers(-5, 100))
    if t == FieldDescriptor.TYPE_MESSAGE:
        return message_fields(fd.message_type)
    raise TypeError(f"unhandled field type {t} of {fd.full_name}")


def _field(fd: FieldDescriptor) -> st.SearchStrategy:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        key, value = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        return st.dictionaries(_scalar(key), _scalar(value), max_size=4)
    if fd.is_repeated:
        return st.lists(_scalar(fd), max_size=5)
    return _scalar(fd)


@st.composite
def message_fields(draw: Any, desc: Descriptor) -> dict[str, Any]:
    """A dict of field name -> value for a random subset of the message's fields (recursive)."""
    return draw(st.fixed_dictionaries({}, optional={fd.name: st.deferred(lambda fd=fd: _field(fd))
                                                     for fd in desc.fields}))


def fill(msg: Any, values: dict[str, Any]) -> Any:
    """Put a message_fields() dict into a proto message (nested messages, repeated fields and maps)."""
    for name, value in values.items():
        fd = msg.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name) if fd.type == FieldDescriptor.TYPE_MESSAGE or fd.is_repeated else None
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            target.update(value)
        elif fd.is_repeated and fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                fill(target.add(), item)
        elif fd.is_repeated:
            target.extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            fill(target, value)
            target.SetInParent()
        else:
            setattr(msg, name, value)
    return msg


# A small valid request per method; near-valid requests replace a few of its fields.
VALID_BASE: dict[str, dict[str, Any]] = {
    "ChatCompletionRequest": {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3},
    "CompletionRequest": {"prompt": "The capital of France is", "max_tokens": 3},
    "TokenizeRequest": {"prompt": "hello world"},
    "DetokenizeRequest": {"tokens": [1, 2, 3]},
}


@dataclass(frozen=True)
class FuzzCall:
    method: str  # LLMService method name
    request: Any  # the request message
    streaming: bool
    shape: str  # "raw" | "near_valid"


@st.composite
def fuzz_calls(draw: Any) -> FuzzCall:
    """One LLMService call with a fuzzed request (any method, raw or near-valid)."""
    method = draw(st.sampled_from(list(SERVICE.methods)))
    desc = method.input_type
    cls = _message_class(desc)
    fuzzed = draw(message_fields(desc))
    base = VALID_BASE.get(desc.name)
    shape = "raw"
    if base is not None and draw(st.booleans()):
        keep = draw(st.sets(st.sampled_from(sorted(fuzzed) or [""]), max_size=3))
        fuzzed = {**base, **{k: v for k, v in fuzzed.items() if k in keep}}
        shape = "near_valid"
    return FuzzCall(method.name, fill(cls(), fuzzed), method.server_streaming, shape)


def _message_class(desc: Descriptor) -> type:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def send(stub: llm_service_pb2_grpc.LLMServiceStub, call: FuzzCall, timeout_s: float,
         metadata: tuple = ()) -> str:
    """Make the call (draining a stream) and return its final status code name."""
    rpc = getattr(stub, call.method)
    try:
        if call.streaming:
            for _ in rpc(call.request, timeout=timeout_s, metadata=metadata):
                pass
        else:
            rpc(call.request, timeout=timeout_s, metadata=metadata)
        return "OK"
    except grpc.RpcError as err:
        return err.code().name
