"""Day-ahead profiles announced after the community file was written.

A DSO restricts a non-firm ("day-ahead") transport right one day ahead, per quarter hour. The API takes the
announcement (``PUT /api/limits/{node}/day-ahead``) and keeps it here as ``<folder>/<node>/<YYYY-MM-DD>.json``;
control reads the folder and merges the profiles into the contracts it keeps. An upload for a date replaces the
community file's profile for that date. The folder is the contract between the two services: plain files, so
they need to share nothing but a volume, and an announcement survives restarts of both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from energyhub.domain.contracts import DayAhead, DayAheadProfile
from energyhub.domain.stored_files import first_error, folder_stamp, write_atomic
from energyhub.domain.topology import Community

__all__ = ["DayAheadStore", "with_profiles"]


class DayAheadStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, node: str, profile: DayAheadProfile) -> Path:
        """Write atomically (a reader never sees half a file)."""
        return write_atomic(
            self.folder / node / f"{profile.date.isoformat()}.json", profile.model_dump_json(indent=2)
        )

    def stamp(self) -> tuple[int, int]:
        """Number of profiles and the newest change: a cheap test whether anything was added or rewritten."""
        return folder_stamp(self.folder)

    def load(self, timezone: str) -> tuple[dict[str, list[DayAheadProfile]], list[str]]:
        """Every stored profile by node, and what could not be read (file: why): a bad file is named, not fatal."""
        profiles: dict[str, list[DayAheadProfile]] = {}
        problems: list[str] = []
        if not self.folder.is_dir():
            return profiles, problems
        for path in sorted(self.folder.glob("*/*.json")):
            try:
                profile = DayAheadProfile.model_validate_json(
                    path.read_text(), context={"timezone": timezone}
                )
            except (OSError, ValidationError) as exc:
                problems.append(f"{path}: {first_error(exc)}")
                continue
            if profile.date.isoformat() != path.stem:
                problems.append(f"{path}: holds the profile of {profile.date}, not of {path.stem}")
                continue
            profiles.setdefault(path.parent.name, []).append(profile)
        return profiles, problems


def _node_documents(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nodes = {doc["hub"]["id"]: doc["hub"]}
    for loop in doc["loops"]:
        nodes[loop["id"]] = loop
        for micro in loop.get("micro_groups", []):
            nodes[micro["id"]] = micro
            nodes.update({c["id"]: c for c in micro["connections"]})
        nodes.update({c["id"]: c for c in loop.get("connections", [])})
    nodes.update({g["id"]: g for g in doc.get("group_agreements", [])})
    return nodes


def with_profiles(
    community: Community, uploads: dict[str, list[DayAheadProfile]]
) -> tuple[Community, list[str]]:
    """The community with ``uploads`` in the day-ahead parts of their nodes, and why any upload was left out (a
    node that is unknown or has no day-ahead right, values above the contracted right). Each node's uploads are
    checked on their own, so one bad announcement does not hold back the others."""
    tz = community.community.timezone
    nodes = community.nodes()
    doc = community.model_dump(mode="json", exclude_none=True)
    documents = _node_documents(doc)
    problems: list[str] = []
    for node_id, profiles in sorted(uploads.items()):
        node = nodes.get(node_id)
        if node is None:
            problems.append(f"{node_id}: not a node of {community.community.id}")
            continue
        right = node.limits.day_ahead
        if right is None:
            problems.append(f"{node_id}: its contract has no day-ahead right to restrict")
            continue
        merged = right.by_date() | {p.date: p for p in profiles}
        candidate = right.model_dump(mode="json", exclude_none=True)
        candidate["profiles"] = [merged[d].model_dump(mode="json", exclude_none=True) for d in sorted(merged)]
        try:
            checked = DayAhead.model_validate(candidate, context={"timezone": tz})
        except ValidationError as exc:
            problems.append(f"{node_id}: {first_error(exc)}")
            continue
        documents[node_id]["limits"]["day_ahead"] = checked.model_dump(mode="json", exclude_none=True)
    if len(problems) == len(uploads):
        return community, problems
    return Community.model_validate(doc, context={"timezone": tz}), problems
