"""An InfluxQL target for the Grafana Foundation SDK, which has no InfluxDB query type of its own.

Grafana's InfluxDB data source in InfluxQL mode takes a raw query (``rawQuery: true``) with Grafana's macros
(``$timeFilter``, ``$__interval``) and dashboard variables; ``alias`` names the series (``$tag_device``).
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

__all__ = ["DATASOURCE", "DATASOURCE_UID", "InfluxQL", "InfluxQLQuery"]

DATASOURCE_UID = "energyhub-influxdb"
DATASOURCE = DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)


class InfluxQLQuery(cogvariants.Dataquery):
    def __init__(self, ref_id: str, query: str, alias: str | None, result_format: str) -> None:
        self.ref_id, self.query, self.alias, self.result_format = ref_id, query, alias, result_format

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refId": self.ref_id,
            "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


class InfluxQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """``InfluxQL("SELECT ...", alias="$tag_node")``; ``table=True`` for table panels."""

    def __init__(
        self, query: str, *, ref_id: str = "A", alias: str | None = None, table: bool = False
    ) -> None:
        self._query = InfluxQLQuery(ref_id, query, alias, "table" if table else "time_series")

    def build(self) -> InfluxQLQuery:
        return self._query
