"""The baseline for cached_rerun.py: a bare Luigi task that is already complete."""

import luigi


class Noop(luigi.Task):
    def complete(self) -> bool:
        return True
