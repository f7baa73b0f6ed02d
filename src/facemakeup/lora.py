"""Users' LoRAs beside the face adapter's LoRA: diffusers' LoRA API on our pipelines.

``FaceLoraLoaderMixin`` sits in front of diffusers' ``StableDiffusionLoraLoaderMixin`` /
``StableDiffusionXLLoraLoaderMixin`` (``loaders/lora_pipeline.py``, ``loaders/lora_base.py``), so
``load_lora_weights(path_or_hub_id, adapter_name=...)``, ``set_adapters``, ``fuse_lora``,
``unfuse_lora``, ``unload_lora_weights``, ``delete_adapters`` and ``get_list_adapters`` behave as in
diffusers, with the face adapter's LoRA (``model.id_adapter.LORA_ADAPTER_NAME``, ``"facemakeup_id"``)
as one more peft adapter of the UNet, weight 1.0 unless told otherwise. What differs, and why:

* the face LoRA stays active: after ``load_lora_weights`` (diffusers activates only the new adapter)
  and after ``set_adapters(names)`` whose ``names`` leave it out (it keeps its weight); naming it in
  ``set_adapters`` sets its weight like any other's. diffusers' own IP-Adapter-FaceID path
  (``load_ip_adapter`` loads its LoRA as ``faceid_0``) needs ``set_adapters(["faceid_0", NAME], [1, 1])``
  after each ``load_lora_weights`` for the same result;
* ``fuse_lora`` merges the users' LoRAs with peft, then ours with ``FaceIDAdapter.fuse_lora``
  (which keeps the original weights, so ``unload_face_adapter`` restores the UNet bit-exactly); ours
  is always merged last (re-merged if it was fused before), so ``unfuse_lora`` takes it out first
  and nothing is applied twice;
* ``unload_lora_weights`` / ``delete_adapters`` remove the users' LoRAs only; the face LoRA comes and
  goes with ``load_face_adapter`` / ``unload_face_adapter``.

Example:
    >>> pipe = FaceMakeUpPipeline(face_adapter=None, **components)
    >>> pipe.load_face_adapter("ip-adapter-faceid-plusv2_sd15.bin")
    >>> pipe.load_lora_weights("latent-consistency/lcm-lora-sdv1-5", adapter_name="lcm")
    >>> pipe.get_active_adapters()
    ['lcm', 'facemakeup_id']
    >>> pipe.fuse_lora()  # both merged, plain linears per step
"""

from __future__ import annotations

from contextlib import contextmanager

from .model.id_adapter import LORA_ADAPTER_NAME, peft_active_adapters

__all__ = ["FaceLoraLoaderMixin", "LORA_ADAPTER_NAME"]


class FaceLoraLoaderMixin:
    """diffusers' pipeline LoRA API with the face adapter's LoRA as one more adapter (module docstring).

    Put it before diffusers' LoRA loader mixin in the bases; the pipeline has ``unet`` and
    ``face_adapter`` (a ``FaceIDAdapter`` or ``None``).
    """

    def _face_lora(self):
        """The face adapter while its LoRA sits unfused in the UNet's peft layers, else ``None``."""
        adapter = getattr(self, "face_adapter", None)
        return adapter if adapter is not None and adapter.lora_in_peft else None

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None, hotswap: bool = False, **kwargs):
        """diffusers' ``load_lora_weights`` (same arguments: a hub id, a folder holding
        ``pytorch_lora_weights.safetensors``, a file with ``weight_name``, or a state dict); the face
        LoRA stays active beside the new adapter.

        Raises:
            ValueError: ``adapter_name`` is the face LoRA's name, or diffusers' errors (a name in use,
                keys that are not a LoRA, shapes that do not fit the UNet or text encoder).
        """
        if adapter_name == LORA_ADAPTER_NAME:
            raise ValueError(f"adapter_name {LORA_ADAPTER_NAME!r} is the face adapter's LoRA; choose another name")
        with self._face_lora_on_top():  # peft unmerges the merged LoRAs when it adds one: ours must not be under them
            super().load_lora_weights(pretrained_model_name_or_path_or_dict, adapter_name=adapter_name, hotswap=hotswap, **kwargs)
        self._keep_face_lora_active()

    @contextmanager
    def _face_lora_on_top(self):
        """While the block runs, a fused face LoRA is taken out (its weights restored bit for bit);
        afterwards it is merged again, on top of whatever the block merged or unmerged."""
        adapter = getattr(self, "face_adapter", None)
        fused = adapter is not None and adapter.lora_fused
        scale = adapter.fused_lora_scale if fused else 1.0
        if fused:
            adapter.unfuse_lora(reinsert=False)
        try:
            yield
        finally:
            if fused:
                adapter.fuse_lora(lora_scale=scale)

    def _keep_face_lora_active(self) -> None:
        if self._face_lora() is None:
            return
        active = peft_active_adapters(self.unet)
        if LORA_ADAPTER_NAME not in active:
            self.unet.set_adapter([*active, LORA_ADAPTER_NAME])  # weights (peft scalings) untouched

    def set_adapters(self, adapter_names, adapter_weights=None):
        """diffusers' ``set_adapters``: these adapters active, with these weights (a float, a list, or
        per-component/per-block dicts). The face LoRA stays active with its weight when
        ``adapter_names`` leaves it out; name it (``"facemakeup_id"``) to set its weight.

        Raises:
            ValueError: an unknown adapter name, weights of another length, or the face LoRA named
                while it is fused (``unfuse_lora`` first).
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        adapter = self._face_lora()
        if LORA_ADAPTER_NAME in names and adapter is None:
            raise ValueError(f"{LORA_ADAPTER_NAME!r} (the face adapter's LoRA) is not in the UNet's LoRA layers: it is fused "
                             "(call unfuse_lora() first) or no face adapter with a LoRA is loaded")
        if adapter is None or LORA_ADAPTER_NAME in names:
            return super().set_adapters(names, adapter_weights)
        weights = list(adapter_weights) if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"Length of adapter names {len(names)} is not equal to the length of the weights {len(weights)}")
        kept = adapter.lora_layer_scales()
        super().set_adapters([*names, LORA_ADAPTER_NAME], [*weights, 1.0])
        adapter.set_lora_layer_scales(kept)

    def fuse_lora(self, components: list[str] | None = None, lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None, **kwargs):
        """diffusers' ``fuse_lora``: merge the active (or the named) LoRAs into the weights of
        ``components`` (default: all the pipeline's LoRA-loadable ones). The face LoRA is merged by
        ``FaceIDAdapter.fuse_lora`` (bit-exact undo), always last: when it was fused already and other
        LoRAs are merged now, it is taken out first and merged again on top. It is merged when
        ``adapter_names`` is ``None`` or names it.

        Raises:
            ValueError: as diffusers (an unknown component); ``safe_fusing`` and a non-finite result.
        """
        components = list(self._lora_loadable_modules) if components is None else list(components)
        adapter = getattr(self, "face_adapter", None)
        if adapter is None or adapter.config.lora_rank == 0 or "unet" not in components:
            return super().fuse_lora(components=components, lora_scale=lora_scale, safe_fusing=safe_fusing,
                                     adapter_names=adapter_names, **kwargs)
        users = None if adapter_names is None else [a for a in adapter_names if a != LORA_ADAPTER_NAME]
        again = None
        if adapter.lora_fused and set(getattr(self.unet, "peft_config", {})) - {LORA_ADAPTER_NAME} and users != []:
            again = adapter.fused_lora_scale
            adapter.unfuse_lora(reinsert=False)  # ours stays on top of every merge, so that unfuse_lora takes it out first
        if users != [] and _has_peft(self, components):
            active = peft_active_adapters(self.unet)
            hide = users is None and LORA_ADAPTER_NAME in active  # merge every active adapter but ours, as diffusers
            if hide:
                self.unet.set_adapter([a for a in active if a != LORA_ADAPTER_NAME])
            try:
                super().fuse_lora(components=components, lora_scale=lora_scale, safe_fusing=safe_fusing, adapter_names=users, **kwargs)
            finally:
                if hide:
                    self.unet.set_adapter(active)
        if adapter_names is None or LORA_ADAPTER_NAME in adapter_names:
            adapter.fuse_lora(lora_scale=lora_scale, safe_fusing=safe_fusing)
        elif again is not None:
            adapter.fuse_lora(lora_scale=again, safe_fusing=safe_fusing)  # also when a user's merge failed
        if adapter.lora_fused:
            self._merged_adapters = self._merged_adapters | {LORA_ADAPTER_NAME}

    def unfuse_lora(self, components: list[str] | None = None, **kwargs):
        """diffusers' ``unfuse_lora``: undo ``fuse_lora`` in ``components`` (default: all); the face
        LoRA first (its original weights, bit for bit), then the others (peft's unmerge)."""
        components = list(self._lora_loadable_modules) if components is None else list(components)
        adapter = getattr(self, "face_adapter", None)
        ours = "unet" in components and adapter is not None and adapter.lora_fused
        if ours:
            adapter.unfuse_lora(reinsert=False)  # the weights as they were before ours, bit for bit
            self._merged_adapters = self._merged_adapters - {LORA_ADAPTER_NAME}
        try:
            if _has_peft(self, components):
                super().unfuse_lora(components=components, **kwargs)
        finally:
            if ours:
                adapter.insert_lora()  # after peft's unmerge: inserting an adapter would unmerge with a warning

    def unload_lora_weights(self):
        """diffusers' ``unload_lora_weights`` for the LoRAs loaded with ``load_lora_weights`` (merged ones
        stay merged, as in diffusers); the face adapter's LoRA stays (``unload_face_adapter`` removes it)."""
        adapter = self._face_lora()
        if adapter is not None:
            adapter._remove_lora(self.unet)
        super().unload_lora_weights()
        if adapter is not None:
            adapter._add_lora(self.unet)

    def delete_adapters(self, adapter_names):
        """diffusers' ``delete_adapters`` for users' LoRAs.

        Raises:
            ValueError: the face adapter's LoRA is named (``unload_face_adapter`` removes it).
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if LORA_ADAPTER_NAME in names:
            raise ValueError(f"{LORA_ADAPTER_NAME!r} is the face adapter's LoRA: remove it with unload_face_adapter()")
        super().delete_adapters(names)


def _has_peft(pipe, components) -> bool:
    """Whether any of ``components`` holds peft layers (diffusers' fuse/unfuse need none otherwise)."""
    return any(getattr(getattr(pipe, c, None), "peft_config", None) for c in components)
