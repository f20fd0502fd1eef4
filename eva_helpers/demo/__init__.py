"""`eva demo`: offline, on the embedded sample: build -> stats -> a joint model, then mask and depth models from it ->
evaluate -> report. `run.py` runs it, `plan.py` holds the schedule and what each part will take, `report.py` writes
the report."""
from eva_helpers.demo.plan import DEMO_RUNS, DemoRun, describe
from eva_helpers.demo.report import margins, photo_size_lines, results_table, write_report
from eva_helpers.demo.run import DEFAULT_MINUTES, DemoConfig, build_sample, ensure_stats, run_demo, train_config

__all__ = ["DEFAULT_MINUTES", "DEMO_RUNS", "DemoConfig", "DemoRun", "build_sample", "describe", "ensure_stats",
           "margins", "photo_size_lines", "results_table", "run_demo", "train_config", "write_report"]
