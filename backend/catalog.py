"""The declared models, by name: what the service checks before queuing (no torch here)."""

from __future__ import annotations

from types import MappingProxyType

from backend.errors import BadInputError, UnknownModelError
from backend.models import SCHEDULER_NAMES, JobSpec
from backend.prompt import PromptLimits
from config.settings import BUILTIN_SHAPES, BUILTIN_TINY, ModelSettings, Settings


def prompt_limits(settings: Settings) -> PromptLimits:
    """The parser's limits as configured, with each model's native size."""
    prompt, engine = settings.prompt, settings.engine
    native = {
        name: (model.pixel_budget or prompt.pixel_budget, model.size_multiple)
        for name, model in engine.models.items()
    }
    return PromptLimits(
        max_prompt_chars=prompt.max_prompt_chars,
        pixel_budget=prompt.pixel_budget,
        max_aspect=prompt.max_aspect,
        max_steps=prompt.max_steps,
        max_guidance=prompt.max_guidance,
        default_n=prompt.default_n,
        max_n=prompt.max_n,
        native_sizes=MappingProxyType(native),
        default_model=engine.default_model,
    )


class ModelCatalog:
    """Model names and their settings; resolves a spec's defaults."""

    def __init__(self, settings: Settings) -> None:
        self._models = dict(settings.engine.models)
        self.default = settings.engine.default_model
        for name, model in self._models.items():
            if model.scheduler not in SCHEDULER_NAMES:
                raise BadInputError(
                    f"engine.models.{name}.scheduler={model.scheduler!r} is not a known "
                    f"scheduler; choose one of {', '.join(SCHEDULER_NAMES)}"
                )

    @property
    def names(self) -> list[str]:
        """The declared model names, sorted."""
        return sorted(self._models)

    def get(self, name: str | None) -> ModelSettings:
        """Settings of the named model (the default when ``None``)."""
        key = self.default if name is None else name
        try:
            return self._models[key]
        except KeyError:
            raise UnknownModelError(key, self.names) from None

    def resolve(self, spec: JobSpec) -> JobSpec:
        """The spec with every model-dependent default filled in (what the engine runs)."""
        from dataclasses import replace

        name = self.default if spec.model is None else spec.model
        model = self.get(name)
        return replace(
            spec,
            model=name,
            steps=spec.steps if spec.steps is not None else model.default_steps,
            guidance=spec.guidance if spec.guidance is not None else model.default_guidance,
            scheduler=spec.scheduler if spec.scheduler is not None else model.scheduler,
        )

    @staticmethod
    def is_builtin(model: ModelSettings) -> bool:
        """Whether ``model`` is one of the built-in pipelines (``builtin:shapes|tiny``)."""
        return model.source in (BUILTIN_SHAPES, BUILTIN_TINY)

    def unknown_words(self, spec: JobSpec) -> list[str]:
        """Words of ``spec``'s prompt its model never saw in training, in prompt order;
        empty for models whose vocabulary is not known here (every real one)."""
        from backend.shapes.shipped import is_shapes_model
        from backend.shapes.vocab import unknown_words

        if not is_shapes_model(self.get(spec.model).source):
            return []
        return unknown_words(" ".join((spec.prompt, spec.negative_prompt)))
