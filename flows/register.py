"""Stage flow: log the pipeline's results to MLflow, register each KD student, gate it, attach its model card,
rebuild the router.

Writes metrics/registry.json: per language the new version, the champion after the gate, and the gate's reasons.
"""

import json

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.registry import log_pipeline_run_task, model_card_task, promote_task, router_task


@flow(name="register")
def register_flow() -> dict:
    root, params = stage_context()
    settings, languages = params["registry"], params["data"]["languages"]
    record = log_pipeline_run_task(root, params)
    report = {"run_id": record["run_id"], "experiment": settings["experiment"], "languages": {}}
    for lang, entry in record["languages"].items():
        decision = promote_task(root, settings, lang, entry["version"]) if settings["auto_promote"] else None
        model_card_task(root, settings, lang, entry["version"], decision)
        report["languages"][lang] = {
            "version": int(entry["version"]),
            "reused": entry["reused"],
            "macro_f1": entry["metrics"]["macro_f1"],
            "retention": entry["metrics"]["retention"],
            "promoted": bool(decision and decision["promoted"]),
            "champion": int(decision["champion"]) if decision and decision["champion"] else None,
            "reasons": decision["reasons"] if decision else ["auto_promote is off"],
        }
    router_version = router_task(root, settings, languages)  # the languages that have a champion
    report["router_version"] = int(router_version) if router_version else None
    path = root / "metrics/registry.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    run_stage(register_flow)
