"""4. Labeling: Label Studio's REST API for the pipeline's project (tasks out, labels back)."""

from __future__ import annotations

import requests

LABEL_CONFIG = """<View>
  <Header value="Model probability: $probability. Is the label 1?"/>
  <Text name="row" value="$summary"/>
  <Choices name="label" toName="row" choice="single" showInLine="true">
    <Choice value="1"/>
    <Choice value="0"/>
  </Choices>
</View>"""


class LabelStudio:
    """The stack's Label Studio, with the token mlox-client holds and its CA."""

    def __init__(self, stack, timeout: float = 120):
        self.base = stack.label_studio.url
        self.headers = stack.label_studio.headers()
        self.verify = stack.settings.ca_file or True
        self.timeout = timeout

    def api(self, method: str, path: str, **kwargs):
        answer = requests.request(method, f"{self.base}/api{path}", headers=self.headers, verify=self.verify,
                                  timeout=self.timeout, **kwargs)
        if answer.status_code >= 400:
            raise RuntimeError(f"Label Studio {method} /api{path}: HTTP {answer.status_code}: {answer.text[:300]}")
        return answer.json() if answer.content else None

    def project(self, title: str, create: bool = False) -> int | None:
        """The id of the project titled ``title`` (created with the label config if asked)."""
        page = self.api("GET", "/projects", params={"title": title, "page_size": 1000})
        for project in page.get("results", page) if isinstance(page, dict) else page:
            if project.get("title") == title:
                return int(project["id"])
        if not create:
            return None
        return int(self.api("POST", "/projects", json={"title": title, "label_config": LABEL_CONFIG})["id"])

    def tasks(self, project: int) -> list[dict]:
        """Every task of the project with its annotations (Label Studio's JSON export)."""
        return self.api("GET", f"/projects/{project}/export", params={"exportType": "JSON", "download_all_tasks": "true"})

    def add(self, project: int, tasks: list[dict]) -> int:
        if not tasks:
            return 0
        return int(self.api("POST", f"/projects/{project}/import", json=[{"data": t} for t in tasks])["task_count"])


def label_of(task: dict) -> int | None:
    """The label a person gave a task (its newest annotation that was not skipped), or None."""
    for annotation in sorted(task.get("annotations") or [], key=lambda a: a.get("id", 0), reverse=True):
        if annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result") or []:
            choices = (result.get("value") or {}).get("choices") or []
            if result.get("from_name") == "label" and choices:
                return int(choices[0])
    return None
