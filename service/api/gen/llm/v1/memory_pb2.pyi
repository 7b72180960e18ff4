from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemoryStatsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class TensorMemory(_message.Message):
    __slots__ = ("name", "ggml_type", "nbytes", "device")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GGML_TYPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    ggml_type: str
    nbytes: int
    device: bool
    def __init__(self, name: _Optional[str] = ..., ggml_type: _Optional[str] = ..., nbytes: _Optional[int] = ..., device: _Optional[bool] = ...) -> None: ...

class LayerMemory(_message.Message):
    __slots__ = ("layer", "weights", "weight_bytes", "kv_bytes_allocated", "kv_bytes_in_use")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_IN_USE_FIELD_NUMBER: _ClassVar[int]
    layer: int
    weights: _containers.RepeatedCompositeFieldContainer[TensorMemory]
    weight_bytes: int
    kv_bytes_allocated: int
    kv_bytes_in_use: int
    def __init__(self, layer: _Optional[int] = ..., weights: _Optional[_Iterable[_Union[TensorMemory, _Mapping]]] = ..., weight_bytes: _Optional[int] = ..., kv_bytes_allocated: _Optional[int] = ..., kv_bytes_in_use: _Optional[int] = ...) -> None: ...

class SlotUsage(_message.Message):
    __slots__ = ("slot", "position", "valid_positions")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    VALID_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    slot: int
    position: int
    valid_positions: int
    def __init__(self, slot: _Optional[int] = ..., position: _Optional[int] = ..., valid_positions: _Optional[int] = ...) -> None: ...

class KVCacheStats(_message.Message):
    __slots__ = ("slots_total", "slots_in_use", "max_positions", "sink_tokens", "dtype", "slots")
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    SINK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots_total: int
    slots_in_use: int
    max_positions: int
    sink_tokens: int
    dtype: str
    slots: _containers.RepeatedCompositeFieldContainer[SlotUsage]
    def __init__(self, slots_total: _Optional[int] = ..., slots_in_use: _Optional[int] = ..., max_positions: _Optional[int] = ..., sink_tokens: _Optional[int] = ..., dtype: _Optional[str] = ..., slots: _Optional[_Iterable[_Union[SlotUsage, _Mapping]]] = ...) -> None: ...

class MemoryStatsResponse(_message.Message):
    __slots__ = ("model", "backend", "device", "layers", "embeddings", "output_head", "workspaces", "pinned_host", "embeddings_bytes", "output_head_bytes", "weights_bytes", "kv_bytes_allocated", "kv_bytes_in_use", "activations_bytes", "pinned_host_bytes", "other_bytes", "total_bytes", "device_total_bytes", "device_free_bytes", "kv_cache", "queue_depth", "other", "device_process_used_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_HEAD_FIELD_NUMBER: _ClassVar[int]
    WORKSPACES_FIELD_NUMBER: _ClassVar[int]
    PINNED_HOST_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_HEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_IN_USE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_HOST_BYTES_FIELD_NUMBER: _ClassVar[int]
    OTHER_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    OTHER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_PROCESS_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: str
    device: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerMemory]
    embeddings: _containers.RepeatedCompositeFieldContainer[TensorMemory]
    output_head: _containers.RepeatedCompositeFieldContainer[TensorMemory]
    workspaces: _containers.RepeatedCompositeFieldContainer[TensorMemory]
    pinned_host: _containers.RepeatedCompositeFieldContainer[TensorMemory]
    embeddings_bytes: int
    output_head_bytes: int
    weights_bytes: int
    kv_bytes_allocated: int
    kv_bytes_in_use: int
    activations_bytes: int
    pinned_host_bytes: int
    other_bytes: int
    total_bytes: int
    device_total_bytes: int
    device_free_bytes: int
    kv_cache: KVCacheStats
    queue_depth: int
    other: _containers.RepeatedCompositeFieldContainer[TensorMemory]
    device_process_used_bytes: int
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerMemory, _Mapping]]] = ..., embeddings: _Optional[_Iterable[_Union[TensorMemory, _Mapping]]] = ..., output_head: _Optional[_Iterable[_Union[TensorMemory, _Mapping]]] = ..., workspaces: _Optional[_Iterable[_Union[TensorMemory, _Mapping]]] = ..., pinned_host: _Optional[_Iterable[_Union[TensorMemory, _Mapping]]] = ..., embeddings_bytes: _Optional[int] = ..., output_head_bytes: _Optional[int] = ..., weights_bytes: _Optional[int] = ..., kv_bytes_allocated: _Optional[int] = ..., kv_bytes_in_use: _Optional[int] = ..., activations_bytes: _Optional[int] = ..., pinned_host_bytes: _Optional[int] = ..., other_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., device_total_bytes: _Optional[int] = ..., device_free_bytes: _Optional[int] = ..., kv_cache: _Optional[_Union[KVCacheStats, _Mapping]] = ..., queue_depth: _Optional[int] = ..., other: _Optional[_Iterable[_Union[TensorMemory, _Mapping]]] = ..., device_process_used_bytes: _Optional[int] = ...) -> None: ...
