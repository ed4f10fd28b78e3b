"""Makes Firehose calls with boto3 as the scenarios in argv[2] (a JSON list) describe, and
prints one JSON line per scenario with what happened: {"name", "ok", "code", "status",
"message"}. The expectations live in the Rust test that runs it.

A scenario: {"name", "op", "stream", "key_id", "secret", "unsigned": bool,
"skew_seconds": int, "verify": CA bundle path for an https endpoint}. op is a Firehose operation, or "NdjsonPost": a POST of two lines to
/streams/<stream>/records signed with botocore's SigV4 signer.

usage: signed_calls_boto3.py ENDPOINT SCENARIOS_JSON
"""
import datetime
import json
import sys
import urllib.error
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
from botocore import UNSIGNED
from botocore.exceptions import ClientError

endpoint, scenarios = sys.argv[1], json.loads(sys.argv[2])
real_now = botocore.auth.get_current_datetime


def client(scenario):
    config = botocore.config.Config(retries={"max_attempts": 1})
    if scenario.get("unsigned"):
        config = config.merge(botocore.config.Config(signature_version=UNSIGNED))
    return boto3.client(
        "firehose",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=scenario.get("key_id", "unused"),
        aws_secret_access_key=scenario.get("secret", "unused"),
        config=config,
        verify=scenario.get("verify"),
    )


def ndjson_post(scenario):
    url = f"{endpoint}/streams/{scenario['stream']}/records"
    request = botocore.awsrequest.AWSRequest(
        method="POST", url=url, data=b'{"via":"ndjson","n":1}\n{"via":"ndjson","n":2}\n')
    credentials = botocore.credentials.Credentials(scenario["key_id"], scenario["secret"])
    botocore.auth.SigV4Auth(credentials, "firehose", "us-east-1").add_auth(request)
    prepared = request.prepare()
    try:
        with urllib.request.urlopen(urllib.request.Request(
                url, data=prepared.body, headers=dict(prepared.headers), method="POST")) as answer:
            return {"ok": True, "status": answer.status, "body": json.loads(answer.read())}
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
        return {"ok": False, "status": error.code, "code": body.get("__type"),
                "message": body.get("message")}


def run(scenario):
    skew = datetime.timedelta(seconds=scenario.get("skew_seconds", 0))
    botocore.auth.get_current_datetime = lambda: real_now() + skew
    try:
        if scenario["op"] == "NdjsonPost":
            return ndjson_post(scenario)
        firehose = client(scenario)
        stream = scenario.get("stream")
        if scenario["op"] == "PutRecord":
            answer = firehose.put_record(DeliveryStreamName=stream, Record={"Data": b'{"via":"boto3"}'})
        elif scenario["op"] == "PutRecordBatch":
            answer = firehose.put_record_batch(
                DeliveryStreamName=stream, Records=[{"Data": b'{"via":"boto3","n":1}'},
                                                    {"Data": b'{"via":"boto3","n":2}'}])
        elif scenario["op"] == "ListDeliveryStreams":
            answer = firehose.list_delivery_streams()
        elif scenario["op"] == "DescribeDeliveryStream":
            answer = firehose.describe_delivery_stream(DeliveryStreamName=stream)
        else:
            raise ValueError(scenario["op"])
        answer.pop("ResponseMetadata", None)
        return {"ok": True, "status": 200, "body": answer}
    except ClientError as error:
        return {"ok": False, "code": error.response["Error"]["Code"],
                "status": error.response["ResponseMetadata"]["HTTPStatusCode"],
                "message": error.response["Error"]["Message"]}
    finally:
        botocore.auth.get_current_datetime = real_now


for scenario in scenarios:
    print(json.dumps({"name": scenario["name"], **run(scenario)}, default=str))
