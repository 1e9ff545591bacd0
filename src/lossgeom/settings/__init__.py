"""Typed settings: every stage's defaults and their documentation in one place.

A settings class is a frozen dataclass whose fields are declared with :func:`setting` (default,
JSON-schema and doc). The config's JSON schema takes those sections' properties from here
(:func:`lossgeom.config.load_schema`), :func:`lossgeom.config.section` fills a section's defaults from
here (and :func:`lossgeom.config.with_defaults` fills the whole config once for the workflow), and the
loss registry declares each loss's parameters the same way (:class:`lossgeom.losses.base.LossParams`).
So a default is one line, and the schema, the rules and the code cannot disagree about it.

Modules: :mod:`.base` (the base class), :mod:`.inputs` (model, problem sources, rollouts, LoRA,
training), :mod:`.toy`, :mod:`.generation` (the backends' options), :mod:`.stages` (lmc, geometry, base
spectrum, resources); the measures' settings are in their modules (:data:`lossgeom.measures.SECTIONS`). :data:`SCHEMA_SECTIONS` says where each goes in the config's schema.
"""

from .base import POSITIVE_INT, REQUIRED, Settings, setting
from .generation import GENERATION_BACKENDS, OpenAISettings, VllmSettings
from .inputs import (
    DTYPES,
    GRADERS,
    LoraSettings,
    ModelSettings,
    ProblemSourceSettings,
    RolloutsSettings,
    TrainingSettings,
)
from .stages import (
    LABEL_PATTERN,
    SECTIONS,
    BaseSpectrumSettings,
    GeometrySettings,
    LmcSettings,
    ResourcesSettings,
)
from .toy import ToyModelSettings, ToySettings

SCHEMA_SECTIONS: dict[str, type[Settings]] = {
    "$defs/toy_model": ToyModelSettings,
    "$defs/problem_source": ProblemSourceSettings,
    "properties/toy": ToySettings,
    "properties/model": ModelSettings,
    "properties/rollouts": RolloutsSettings,
    "properties/lora": LoraSettings,
    "properties/training": TrainingSettings,
    **{f"properties/{key}": cls for key, cls in SECTIONS.items()},  # + the measures' (lossgeom.config)
    **{f"properties/generation/properties/{key}": cls for key, cls in GENERATION_BACKENDS.items()},
}

__all__ = [
    "DTYPES",
    "GENERATION_BACKENDS",
    "GRADERS",
    "LABEL_PATTERN",
    "POSITIVE_INT",
    "REQUIRED",
    "SCHEMA_SECTIONS",
    "SECTIONS",
    "BaseSpectrumSettings",
    "GeometrySettings",
    "LmcSettings",
    "LoraSettings",
    "ModelSettings",
    "OpenAISettings",
    "ProblemSourceSettings",
    "ResourcesSettings",
    "RolloutsSettings",
    "Settings",
    "ToyModelSettings",
    "ToySettings",
    "TrainingSettings",
    "VllmSettings",
    "setting",
]
