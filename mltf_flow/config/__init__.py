"""The typed configuration of mltf_flow: one schema, loaded once per invocation and passed down.

* :mod:`~mltf_flow.config.settings`: settings (``defaults.yaml`` < site < user < ``$MLTF_FLOW_CONFIG`` <
  ``MLTF_FLOW_<SETTING>`` < arguments) and :func:`load_settings`.
* :mod:`~mltf_flow.config.profiles`: cluster profiles, :class:`LocalProfile` | :class:`SlurmProfile`
  (loaded and layered by :mod:`mltf_flow.clusters.profiles`).
* :mod:`~mltf_flow.config.fabric`, :mod:`~mltf_flow.config.rucio`, :mod:`~mltf_flow.config.gds`: a profile's
  sections, typed at load and handed to their consumers as models.
* :mod:`~mltf_flow.config.pipeline`: ``pipeline.yaml`` (the document and its steps).
* :mod:`~mltf_flow.config.backend`: the keys of ``mlflow run --backend mltf --backend-config``.
* :mod:`~mltf_flow.config.units`: durations and sizes (Dask's grammar), SLURM time limits and ``--mem``: the one
  parser each.
* :mod:`~mltf_flow.config.schema`: the base of the types (frozen dataclasses), validation with pydantic and
  the translation of its errors into :class:`~mltf_flow.errors.ConfigError` messages (file, profile, key,
  what was found, what is expected); :mod:`~mltf_flow.config.fields`: the constraints fields declare.
* :mod:`~mltf_flow.config.memo`: validated values remembered across invocations, keyed by the inputs' contents.
* :mod:`~mltf_flow.config.files`: YAML files, parsed once per version of the file.

Importing this package imports none of them: its four names below are loaded when first used, so a module
that needs one section (a job's wrapper resolving its fabric: :mod:`~mltf_flow.config.fabric`) does not pay
for PyYAML and the settings (30-40 ms a job). Pydantic is imported when a file has to be validated, which a
rerun with unchanged configuration never does.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mltf_flow.config.files import read_yaml_mapping as read_yaml_mapping
    from mltf_flow.config.settings import SETTING_KEYS as SETTING_KEYS
    from mltf_flow.config.settings import Settings as Settings
    from mltf_flow.config.settings import load_settings as load_settings

_LAZY = {"read_yaml_mapping": "mltf_flow.config.files", "SETTING_KEYS": "mltf_flow.config.settings",
         "Settings": "mltf_flow.config.settings", "load_settings": "mltf_flow.config.settings"}


def __getattr__(name: str) -> Any:
    """The package's names, imported on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = ["SETTING_KEYS", "Settings", "load_settings", "read_yaml_mapping"]
