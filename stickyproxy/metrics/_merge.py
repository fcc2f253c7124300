"""
Counters of several processes as one: worker processes send theirs to the
parent, whose C{/metrics} shows the sums.

C{prometheus_client}'s multiprocess mode does not fit: it keeps one global
registry per process in memory-mapped files, where each proxy here has
its own registry, and its gauges read live pools.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

#: The kinds of family whose samples add up across processes.
SUMMED = ("counter", "histogram", "summary")

#: A family as JSON: name, type, help, and its samples as [name, labels,
#: value].
FamilyJSON = list[object]


def counters_json(registry: CollectorRegistry) -> list[FamilyJSON]:
    """
    A registry's counters and histograms as JSON-ready values, without
    their C{_created} samples (a creation time does not add up).
    """
    return [
        [
            family.name,
            family.type,
            family.documentation,
            [
                [sample.name, sample.labels, sample.value]
                for sample in family.samples
                if not sample.name.endswith("_created")
            ],
        ]
        for family in registry.collect()
        if family.type in SUMMED
    ]


def counters_from_json(data: Any) -> list[Metric]:
    """
    Read what L{counters_json} wrote (another process did).

    :raises ValueError: it is not shaped so.
    """
    families = []
    try:
        for name, kind, documentation, samples in data:
            family = Metric(str(name), str(documentation), str(kind))
            family.samples = [
                Sample(
                    str(sample),
                    {str(k): str(v) for k, v in labels.items()},
                    float(value),
                )
                for sample, labels, value in samples
            ]
            families.append(family)
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"not a list of metric families: {error}") from None
    return families


def merge(*groups: Iterable[Metric]) -> list[Metric]:
    """
    Families of several processes as one list: the samples of a counter,
    histogram or summary with the same name and labels added up; of any
    other kind (gauges), the first group's.
    """
    merged: dict[str, Metric] = {}
    for group in groups:
        for family in group:
            kept = merged.get(family.name)
            if kept is None:
                kept = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                kept.samples = list(family.samples)
                continue
            if kept.type != family.type or family.type not in SUMMED:
                continue
            at = {
                (s.name, tuple(sorted(s.labels.items()))): i
                for i, s in enumerate(kept.samples)
            }
            for sample in family.samples:
                index = at.get((sample.name, tuple(sorted(sample.labels.items()))))
                if index is None:
                    kept.samples.append(sample)
                elif not sample.name.endswith("_created"):
                    old = kept.samples[index]
                    kept.samples[index] = old._replace(value=old.value + sample.value)
    return list(merged.values())


@attrs.frozen
class Families:
    """
    Families already collected, as an exposition encoder reads them (a
    C{prometheus_client} collector).
    """

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families
