"""A shard of a dataset being written, and which shards are already whole: shared by collection and
ingest, in a module light enough for ingest tasks (no MuJoCo import)."""

from __future__ import annotations

from dataclasses import dataclass

from raylam.data.storage import Location


@dataclass(frozen=True)
class ShardPlan:
    index: int
    split: str  # "train" | "heldout"
    episodes: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}.tar"

    @property
    def info_name(self) -> str:
        return f"shard-{self.index:06d}.json"


def finished_shards(location: Location, plans: list[ShardPlan]) -> dict[int, dict]:
    names = set(location.list())
    done = {}
    for plan in plans:
        if plan.name in names and plan.info_name in names:
            done[plan.index] = location.read_json(plan.info_name)
    return done
