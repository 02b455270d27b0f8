"""The Flower ServerApp: an adapter that hands the grid to `mfpt.federation.server.serve`, then writes report.md.

Under `flwr run` the experiment comes from run_config (`experiment` = path of a TOML file, flattened
`section.key` overrides, `resume`); `mfpt run` builds the app around an already-validated config instead.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from mfpt.analysis.report import write_run_report
from mfpt.config import ExperimentConfig
from mfpt.federation.server import config_from_run_config, serve
from mfpt.results.tracking import publish_run


def build_server_app(cfg: ExperimentConfig | None = None, resume: bool = False, quiet: bool = False) -> ServerApp:
    """A ServerApp for `cfg`, or (cfg=None) one that reads the experiment from Flower's run_config."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        experiment, resume_run = (cfg, resume) if cfg is not None else config_from_run_config(context.run_config)
        serve(grid, experiment, resume=resume_run, quiet=quiet)
        write_run_report(experiment.output_dir)
        publish_run(experiment, experiment.output_dir)

    return server_app


app = build_server_app()
