"""The extension API: everything a plug-in method, dataset adapter or backbone needs, in one import.

    from bench.api import Method, hp, register_method, ModelOutput

Names resolve on first use (PEP 562), so ``import bench.api`` stays cheap and importing one
sub-module here never pulls in the rest. The modules behind the names:

* ``bench.api.method``: :class:`Method`, :class:`MethodContext`, :class:`NoParams`, :class:`PrepareData`
* ``bench.api.config``: :func:`hp` (typed, range-checked hyper-parameters), :class:`TrainConfig`
* ``bench.api.search``: :class:`Real`, :class:`Integer`, :class:`Categorical` (a method's ``search_space``)
* ``bench.api.registry``: :func:`register_method`, :func:`register_dataset`, :func:`register_backbone`
* ``bench.models.registry``: :class:`BackboneFactory`, :class:`InputSpec` (what a backbone is built for)
* ``bench.api.errors``: :class:`BenchError` and its subclasses
* ``bench.api.names``: :func:`check_component` (names that become file names)
* ``bench.data``: :class:`DatasetAdapter`, :class:`Modality`, :class:`Split`, :class:`PreparedDataset`
* ``bench.models``: :class:`ModelOutput`, :class:`Backbone` and the built-in backbones
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Method": "bench.api.method", "MethodContext": "bench.api.method", "NoParams": "bench.api.method",
    "PrepareData": "bench.api.method",
    "hp": "bench.api.config", "TrainConfig": "bench.api.config", "params_dict": "bench.api.config",
    "register_method": "bench.api.registry", "register_dataset": "bench.api.registry",
    "register_backbone": "bench.api.registry", "BACKBONES": "bench.api.registry",
    "METHODS": "bench.api.registry", "DATASETS": "bench.api.registry",
    "BackboneFactory": "bench.models.registry", "InputSpec": "bench.models.registry",
    "BenchError": "bench.api.errors", "ConfigError": "bench.api.errors", "RecordError": "bench.api.errors",
    "check_component": "bench.api.names",
    "Real": "bench.api.search", "Integer": "bench.api.search", "Categorical": "bench.api.search",
    "DatasetAdapter": "bench.data.adapter", "Modality": "bench.data.adapter", "Split": "bench.data.adapter",
    "stratified_split": "bench.data.adapter",
    "PreparedDataset": "bench.data.prepared", "ArraySpec": "bench.data.cache", "PrepPlan": "bench.data.cache",
    "SplitPlan": "bench.data.cache",
    "ModelOutput": "bench.models.output", "Backbone": "bench.models.output", "to_4d": "bench.models.output",
    "ResNetBackbone": "bench.models.resnet", "MLPBackbone": "bench.models.mlp",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bench.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
