"""Baselines served and run exactly as gu1-sync is: the least a Flask endpoint can do with a webhook
(read it, answer 202), and the least pipeline on the same stack (Flask enqueues an RQ job; the job
makes the Salesforce upsert with a plain requests session)."""

from __future__ import annotations

import json
import os

import requests
from flask import Flask, jsonify, request
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

app = Flask("bare")


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


@app.post("/webhooks/<name>")
def receive(name: str):
    body = request.get_data()
    return jsonify(id=str(len(body)), duplicate=False), 202


@app.post("/pipeline/<name>")
def pipeline(name: str):
    document = json.loads(request.get_data())
    entity = document["payload"]["entity"]
    queue = Queue("bare", connection=_redis(), serializer=JSONSerializer)
    queue.enqueue("bare.upsert", entity["externalId"], {"Status__c": document["payload"]["status"]})
    return jsonify(duplicate=False), 202


_connection: Redis | None = None
_session: requests.Session | None = None


def _redis() -> Redis:
    global _connection
    if _connection is None:
        _connection = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _connection


def upsert(external_id: str, fields: dict) -> int:
    """The RQ job of the baseline pipeline: one PATCH, on a session kept from job to job."""
    global _session
    if _session is None:
        _session = requests.Session()
        _session.headers["Authorization"] = f"Bearer {os.environ['SF_SESSION']}"
    url = f"{os.environ['BENCH_SF_URL']}/services/data/v59.0/sobjects/Contact/Gu1_External_Id__c/{external_id}"
    return _session.patch(url, json=fields, timeout=5).status_code
