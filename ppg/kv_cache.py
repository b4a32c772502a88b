"""A KV cache that grows in place. transformers' DynamicLayer appends a step's keys and values
with torch.cat, which copies the layer's whole cache for every decoded id: for SmolLM2 at 8 rows
and a few hundred ids of context, a quarter of a decoding step (torch.profiler). GrowingLayer
keeps them in buffers with room to spare, writes the new ids in place and doubles a full buffer:
the attention reads the same keys and values, id for id."""

from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of the first ids of larger buffers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.room_k = self.room_v = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, used = key_states.shape[-2], self.get_seq_length()
        if not used:  # a new or reset cache: buffers of its own
            self.room_k = self.room_v = None
        elif self.room_k is None or self.keys.untyped_storage().data_ptr() != self.room_k.untyped_storage().data_ptr():
            # a stock operation (row selection, reordering, offloading) left tensors of its own:
            # they become the buffers (cropping leaves a view of the buffer, which is still the one)
            self.room_k, self.room_v = self.keys, self.values
        if self.room_k is not None and key_states.shape[0] != self.room_k.shape[0]:
            # torch.cat would refuse; an in-place write would broadcast one row into all of them
            raise ValueError(f"a batch of {key_states.shape[0]} rows for a cache of {self.room_k.shape[0]}")
        if self.room_k is None or used + n > self.room_k.shape[-2]:
            room = max(2 * (used + n), 64)
            self.room_k, self.room_v = (x.new_empty(*x.shape[:-2], room, x.shape[-1])
                                        for x in (key_states, value_states))
            if used:
                self.room_k[..., :used, :], self.room_v[..., :used, :] = self.keys, self.values
        self.room_k[..., used:used + n, :], self.room_v[..., used:used + n, :] = key_states, value_states
        self.keys, self.values = self.room_k[..., :used + n, :], self.room_v[..., :used + n, :]
        return self.keys, self.values


def growing_cache(config) -> DynamicCache:
    """transformers' DynamicCache for a model of this config, its full-attention layers
    GrowingLayers (sliding-window layers, which drop old ids, stay as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
