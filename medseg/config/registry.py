"""Hydra's ConfigStore entries (the schema, one data schema per layout) and the YAML files' resolvers,
registered before Hydra composes. Apart from schema.py, so that the schema does not import the planner
behind the `${plan:...}` resolver (the planner reads data through modules that read the schema)."""

from __future__ import annotations

from medseg.config.schema import LAYOUT_SCHEMAS, MedsegConfig


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore; call before composing (run.py and tests do)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="medseg_schema", node=MedsegConfig)
    for layout, schema in LAYOUT_SCHEMAS.items():
        store.store(name=f"medseg_data_{layout}", node=schema)
    from medseg.config.resolvers import register_resolvers

    register_resolvers()
