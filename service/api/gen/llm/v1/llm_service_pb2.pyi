from service.api.gen.llm.v1 import chat_pb2 as _chat_pb2
from service.api.gen.llm.v1 import completions_pb2 as _completions_pb2
from service.api.gen.llm.v1 import memory_pb2 as _memory_pb2
from service.api.gen.llm.v1 import models_pb2 as _models_pb2
from service.api.gen.llm.v1 import tokenize_pb2 as _tokenize_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
