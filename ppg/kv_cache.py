"""A KV cache that grows in place. transformers' DynamicLayer appends a step's keys and values
with torch.cat, which copies the layer's whole cache for every decoded id: for SmolLM2 at 8 rows
and a few hundred ids of context, a quarter of a decoding step (torch.profiler). GrowingLayer
keeps them in buffers with room to spare, writes the new ids in place and doubles a full buffer:
the attention reads the same keys and values, id for id."""

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of the first ids of larger buffers."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.room_k = self.room_v = None
        n, used = key_states.shape[-2], self.get_seq_length()
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

    def _adopt(self):
        # the stock operations (row selection, cropping) leave plain tensors: they become the buffers
        if self.is_initialized:
            self.room_k, self.room_v = (None, None) if self.keys.numel() == 0 else (self.keys, self.values)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._adopt()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._adopt()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._adopt()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._adopt()

    def reset(self) -> None:
        super().reset()
        self.room_k = self.room_v = None


def growing_cache(config) -> DynamicCache:
    """transformers' DynamicCache for a model of this config, its full-attention layers
    GrowingLayers (sliding-window layers, which drop old ids, stay as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
