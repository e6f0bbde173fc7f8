"""``python -m framepipe.cluster._node_manager AGENT_PID serve ...``: a node agent's manager.

The same ``framepipe serve`` a single machine runs, after one step: it dies with the agent
(``PR_SET_PDEATHSIG``, or at once if the agent is already gone), as a worker dies with its
manager.
"""

from __future__ import annotations

import sys

from framepipe.core.processes import die_with_parent


def main(argv: list[str]) -> int:
    die_with_parent(int(argv[0]))
    from framepipe.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
