"""Reads every object under a prefix of an S3 bucket with boto3, the way a consumer of
server-side-encrypted objects would, and prints one JSON line per object: its key, the
encryption the store reports, whether reading it without the customer key failed, and its
line count when read (with the key, if one is given) and its ETag.

usage: sse_read_boto3.py ENDPOINT ACCESS_KEY SECRET_KEY BUCKET PREFIX [CUSTOMER_KEY_BASE64]
"""
import base64
import gzip
import json
import sys

import boto3
from botocore.exceptions import ClientError

endpoint, access, secret, bucket, prefix = sys.argv[1:6]
customer_key = base64.b64decode(sys.argv[6]) if len(sys.argv) > 6 else None
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                  aws_secret_access_key=secret, region_name="us-east-1")
extra = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": customer_key} if customer_key else {}
for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
    key = item["Key"]
    head = s3.head_object(Bucket=bucket, Key=key, **extra)
    try:
        s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        plain_read = "ok"
    except ClientError as error:
        plain_read = error.response["Error"]["Code"]
    body = s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
    print(json.dumps({
        "key": key,
        "sse": head.get("ServerSideEncryption"),
        "sse_customer": head.get("SSECustomerAlgorithm"),
        "read_without_key": plain_read,
        "lines": gzip.decompress(body).count(b"\n"),
        "etag": head.get("ETag", ""),
    }))
