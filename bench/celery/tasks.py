"""Celery side of the Krill benchmark: the same command through subprocess.

Same RabbitMQ as Krill, a quorum queue, acks_late, results over AMQP (rpc://).
Started by krill-bench as: celery -A tasks worker -P prefork -c 2 -Q krill-bench-celery
"""
import os
import subprocess

from celery import Celery
from kombu import Queue

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "krill-bench-celery")

app = Celery(
    "krillbench",
    broker=os.environ.get("BENCH_CELERY_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
app.conf.update(
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_queues=[Queue(QUEUE, queue_arguments={"x-queue-type": "quorum"})],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="krillbench.run")
def run(cmd):
    p = subprocess.run(cmd, shell=True, capture_output=True)
    return {"code": p.returncode, "stdout": p.stdout.decode(errors="replace")}
