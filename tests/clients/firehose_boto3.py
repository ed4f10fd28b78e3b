"""Drives Hydrant with boto3, the AWS SDK for Python, exactly as it would drive Amazon Data
Firehose: only the endpoint URL differs. Exits non-zero on the first broken expectation.

usage: firehose_boto3.py ENDPOINT STREAM FULL_STREAM
  STREAM       a stream that delivers normally
  FULL_STREAM  a stream whose destination is down and buffers are small
"""
import json
import sys

import boto3
import botocore.config
from botocore.exceptions import ClientError

endpoint, stream, full_stream = sys.argv[1:4]
firehose = boto3.client(
    "firehose",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="any",
    aws_secret_access_key="any",
    config=botocore.config.Config(retries={"max_attempts": 1}),
)

names = firehose.list_delivery_streams()["DeliveryStreamNames"]
assert stream in names and full_stream in names, names

description = firehose.describe_delivery_stream(DeliveryStreamName=stream)
description = description["DeliveryStreamDescription"]
assert description["DeliveryStreamName"] == stream, description
assert description["DeliveryStreamStatus"] == "ACTIVE", description
hints = description["Destinations"][0]["ExtendedS3DestinationDescription"]["BufferingHints"]
assert hints["IntervalInSeconds"] == 1, hints

sent = []
single = json.dumps({"client": "boto3", "n": 0}).encode()
answer = firehose.put_record(DeliveryStreamName=stream, Record={"Data": single})
assert answer["RecordId"] and answer["Encrypted"] is False, answer
sent.append(0)

records = [{"Data": json.dumps({"client": "boto3", "n": n}).encode() + b"\n"} for n in range(1, 101)]
answer = firehose.put_record_batch(DeliveryStreamName=stream, Records=records)
assert answer["FailedPutCount"] == 0, answer
assert len(answer["RequestResponses"]) == 100
assert len({r["RecordId"] for r in answer["RequestResponses"]}) == 100
sent.extend(range(1, 101))

# A stream whose buffers are full answers per record, as Firehose does.
payload = {"Data": b"x" * 200_000}
failed = None
for _ in range(40):
    answer = firehose.put_record_batch(DeliveryStreamName=full_stream, Records=[payload] * 5)
    if answer["FailedPutCount"] > 0:
        failed = answer
        break
assert failed is not None, "the full stream never refused a record"
errors = [r for r in failed["RequestResponses"] if "ErrorCode" in r]
assert len(errors) == failed["FailedPutCount"], failed
assert all(r["ErrorCode"] == "ServiceUnavailableException" for r in errors), errors
assert all(r["ErrorMessage"] == "Slow down." for r in errors), errors

def error_code(call):
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"], error.response["Error"]["Message"]
    raise AssertionError("the call should have failed")

code, message = error_code(lambda: firehose.put_record(
    DeliveryStreamName="no-such-stream", Record={"Data": b"x"}))
assert code == "ResourceNotFoundException" and "no-such-stream" in message, (code, message)
try:
    firehose.describe_delivery_stream(DeliveryStreamName="no-such-stream")
    raise AssertionError("describe of a missing stream should fail")
except firehose.exceptions.ResourceNotFoundException:
    pass
code, message = error_code(lambda: firehose.put_record_batch(
    DeliveryStreamName=stream, Records=[{"Data": b"y" * 1_000_000}] * 5))
assert code == "InvalidArgumentException" and "4 MiB" in message, (code, message)
code, message = error_code(lambda: firehose.put_record(
    DeliveryStreamName="bad name", Record={"Data": b"x"}))
assert code == "ValidationException" and "deliveryStreamName" in message, (code, message)

print(json.dumps({"sent": sent}))
