"""What flows on a model wire (TE_STYLEGAN, TE_ENCODER, TE_EDIT_TRANSFORMER, TE_VIT, TE_PUT; SMART inside a latent):
one handle type for every family, and the one way a loader node makes it.

A handle holds the family's descriptor (models/core/descriptor.py) and its module under ComfyUI's memory management
(the bridge's ManagedModel: loaded on demand, offloaded and freed like any model). A stage adds only what its
family needs on top (StyleGANHandle checks latents against its generator; DinoHandle keeps DINO frozen).
"""
from __future__ import annotations

from typing import Callable, TypeVar

from ..models.core.descriptor import ModelDescriptor
from ..models.core.precision import PrecisionPolicy
from . import comfy_bridge as bridge
from .inputs import load_model_file

H = TypeVar("H", bound="ModelHandle")


class ModelHandle:
    def __init__(self, descriptor: ModelDescriptor):
        self.descriptor = descriptor
        self.managed = bridge.ManagedModel(descriptor.model)

    @property
    def name(self) -> str:
        return self.descriptor.name

    @property
    def config(self):
        return self.descriptor.config

    @property
    def precision(self) -> PrecisionPolicy:
        return self.descriptor.precision

    def load(self):
        """The module on the compute device (ComfyUI makes room for it first)."""
        return self.managed.load()

    def __repr__(self) -> str:
        return f"{type(self).__name__.removesuffix('Handle')}({self.name}, {self.descriptor.family})"


def load_handle(node: str, input_name: str, folder: str, filename: str,
                loader: Callable[[str], ModelDescriptor], handle_type: type[H] = ModelHandle) -> H:
    """A loader node's work: the file chosen in `input_name` (models/<folder>) read by a registry loader, its
    notes logged, wrapped in the family's handle. Errors name the node and the input."""
    descriptor = load_model_file(node, input_name, folder, filename, loader)
    for note in descriptor.notes:
        bridge.log.info("TransEdit: %s: %s", descriptor.name, note)
    return handle_type(descriptor)
