"""``python -m tlc.plan``: ``tlc plan`` without loading the other stages' modules (start-up time)."""

from tlc.plan.command import main

raise SystemExit(main())
