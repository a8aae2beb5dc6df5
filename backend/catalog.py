"""The declared models, by name: what the service checks before queuing (no torch here)."""

from __future__ import annotations

from backend.errors import BadInputError, UnknownModelError
from backend.models import SCHEDULER_NAMES, JobSpec
from config.settings import BUILTIN_TINY, ModelSettings, Settings


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
        """Whether ``model`` is the built-in tiny pipeline (``builtin:tiny``)."""
        return model.source == BUILTIN_TINY
