"""Each pipeline's camera slot, reserved in Ray's scheduler on the pipeline's node.

A node declares its ``camera_slots`` when it starts (``ray start --resources``). For each
pipeline placed on such a node the front end holds a detached placement group
``framepipe-slot:<pipeline id>`` with one bundle ``{"camera_slots": 1}``, pinned to the node by
its ``ray.io/node-id`` label. So Ray's resource view is the truth about free slots: a slot
taken by anything else on the cluster (another framepipe front end, other Ray work) makes the
reservation fail, and the front end tries the next node; ``ray status`` and the dashboard show
framepipe's use. Blocking calls: the front end runs them in a thread.
"""

from __future__ import annotations

import contextlib

__all__ = ["PREFIX", "Reservations"]

PREFIX = "framepipe-slot:"


class Reservations:
    def reserve(self, pipeline_id: str, node_id: str, timeout_s: float) -> bool:
        """Reserve one camera slot on ``node_id`` for the pipeline (replacing the one it held);
        False (nothing held) when Ray has no free slot there within ``timeout_s``."""
        from ray.util.placement_group import placement_group, remove_placement_group

        self.release(pipeline_id)
        group = placement_group(
            [{"camera_slots": 1}],
            strategy="STRICT_PACK",
            name=PREFIX + pipeline_id,
            lifetime="detached",
            bundle_label_selector=[{"ray.io/node-id": node_id}],
        )
        if group.wait(timeout_s):
            return True
        remove_placement_group(group)
        return False

    def release(self, pipeline_id: str) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        with contextlib.suppress(ValueError):  # none held
            remove_placement_group(ray.util.get_placement_group(PREFIX + pipeline_id))

    def held(self) -> set[str]:
        """The pipelines that hold a reservation now."""
        from ray.util.placement_group import placement_group_table

        table = placement_group_table()
        return {
            entry["name"].removeprefix(PREFIX)
            for entry in table.values()
            if entry.get("name", "").startswith(PREFIX) and entry.get("state") != "REMOVED"
        }
