"""Slack bodies escape what senders control (issue 15, case 11).

``service.name`` and the model come from spans: ``<!channel>``, ``<!here>`` and ``<https://evil|…>``
in them used to reach Slack unescaped in the fallback ``text`` and inside the runbook link.
"""

from __future__ import annotations

import json
import re

from sentinel.slack import slack_body
from tests.test_alert_sinks_webhook import make_alert

HOSTILE = "<!channel> <!here> <https://evil.example|click> &amp"


def _mrkdwn_texts(body: dict[str, object]) -> list[str]:
    """Every string Slack parses as mrkdwn: the fallback text and every mrkdwn object."""
    found = [str(body["text"])]

    def walk(x: object) -> None:
        if isinstance(x, dict):
            if x.get("type") == "mrkdwn":
                found.append(str(x["text"]))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(body["blocks"])
    return found


def test_service_model_and_runbook_link_are_escaped() -> None:
    doc = {**make_alert(1).to_dict(), "service_name": HOSTILE, "model": "gpt-<!everyone>",
           "summary": f"errors on {HOSTILE}",
           "runbook_url": f"https://runbooks.example/{HOSTILE}|<https://evil.example>"}
    body = slack_body(doc)
    for text in _mrkdwn_texts(body):
        # The only control sequence left is the runbook link the sink itself writes.
        sequences = re.findall(r"<[^>]*>", text)
        assert all(s.startswith("<https://runbooks.example/") and s.endswith("|Runbook>") for s in sequences), text
        assert "<!" not in text and "&amp" not in text.replace("&amp;", "")
    link = next(t for t in _mrkdwn_texts(body) if t.endswith("|Runbook>"))
    assert link.count("|") == 1, "a | in the URL does not start the label early"
    assert "&lt;!channel&gt;" in body["text"]
    json.dumps(body)
