"""Monitoring of served traffic as a Prefect flow: the inference log against training, per language.

Reads the rows `polydistill serve --log-inference` logged in the window (params.yaml `monitor`), writes
reports/monitor.html and .json, logs the figures as an MLflow `monitor` run, and when at least
`monitor.trigger_languages` languages are flagged starts a run of the pipeline deployment (`schedule.deployment`).

    python -m flows.monitor run      # one report now
    python -m flows.monitor serve    # a deployment with the cron of params.yaml `monitor.schedule`
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow

from flows.common import show_core_logs, stage_context
from tasks.monitor import log_monitor_task, monitor_report_task, trigger_pipeline_task, write_monitor_report_task

PIPELINE_FLOW = "polydistill-pipeline"


@flow(name="monitor")
def monitor_flow() -> dict:
    """Report, pipeline triggered when enough languages are flagged, report files, MLflow run.

    A failed trigger (no Prefect server serving the deployment, say) is recorded in the report, then fails the flow.
    """
    root, params = stage_context()
    report = monitor_report_task(root, params)
    trigger = None
    if report["trigger"]:
        trigger = trigger_pipeline_task(f"{PIPELINE_FLOW}/{params['schedule']['deployment']}",
                                        report["flagged_languages"], return_state=True)
        report["triggered_run"] = trigger.result() if trigger.is_completed() else f"failed: {trigger.message}"
    files = write_monitor_report_task(root, params, report)
    report["mlflow_run_id"] = log_monitor_task(root, params["registry"], report, files)
    if trigger is not None and not trigger.is_completed():
        raise RuntimeError(f"could not start the pipeline deployment: {trigger.message}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "serve"])
    action = parser.parse_args().action
    show_core_logs()
    if action == "serve":
        from prefect.schedules import Cron

        schedule = stage_context()[1]["monitor"]["schedule"]
        monitor_flow.serve(name=schedule["deployment"], schedule=Cron(schedule["cron"], timezone=schedule["timezone"]),
                           print_starting_message=True)
        return
    state = monitor_flow(return_state=True)
    if state.is_failed():
        print(f"\nmonitor failed: {state.message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
