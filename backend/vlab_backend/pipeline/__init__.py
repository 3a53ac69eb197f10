"""The generic dAIEdge pipeline: one benchmark job in a job directory.

It copies the target repository into `<job>/work`, places the inputs at its root, exports the
dAIEdge environment and runs support.sh, build.sh, deploy.sh and manager.sh from the root, each
under its time limit. The first failing step ends the job; the outputs that exist stay in
`work/AI_Manager/out` for collection. The result is written to `<job>/pipeline.json`.
The same code runs under the local runner and inside the pipeline container on Nomad hosts.
"""

from __future__ import annotations

from vlab_backend.pipeline.job import JobSpec, run_pipeline

__all__ = ["JobSpec", "run_pipeline"]
