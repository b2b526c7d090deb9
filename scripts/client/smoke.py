"""Drives /bridge/v1 through the client openapi-python-client generated from
openapi/converge.json: every call, request body and answer goes through generated code and
models. Usage: smoke.py BASE_URL CA_FILE TOKEN"""

import sys
import time

from converge_client import AuthenticatedClient
from converge_client.api.bridge import (
    create_host,
    delete_host,
    get_host,
    list_flavors,
    list_hosts,
    list_images,
    list_networks,
    list_storage_classes,
    start_host,
    stop_host,
)
from converge_client.models import (
    Blank,
    DiskRequest,
    DiskSourceType4,
    ErrorBody,
    ErrorCode,
    HostList,
    HostRequest,
    HostState,
    HostView,
    NicRequest,
    StepState,
)


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    base_url, ca_file, token = sys.argv[1:4]
    client = AuthenticatedClient(base_url=base_url, token=token, verify_ssl=ca_file, raise_on_unexpected_status=True)

    def request(name, storage_class=None):
        return HostRequest(
            name=name,
            memory="64Mi",
            start=False,
            disks=[DiskRequest(name="root", size="16Mi", source=DiskSourceType4(blank=Blank()), storage_class=storage_class)],
            nics=[NicRequest(network="pod")],
            ssh_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv7 smoke@client"],
        )

    classes = list_storage_classes.sync(client=client)
    check(any(c.name == "local" and c.default for c in classes.items), "storage classes list the default class")
    check(list_networks.sync(client=client).items[0].name == "pod", "networks list the pod network")
    check(list_flavors.sync(client=client).items == [], "flavors list (none defined)")
    check(isinstance(list_images.sync(client=client).items, list), "images list")

    made = create_host.sync_detailed(client=client, body=request("generated"), idempotency_key="smoke-1")
    check(made.status_code == 201 and isinstance(made.parsed, HostView), f"create answers 201 with a HostView ({made.status_code})")
    host = made.parsed
    check(host.state == HostState.CREATED, "the host is Created")
    check([s.state for s in host.steps] == [StepState.DONE] * 3, "its three steps are Done")
    check(len(host.nics[0].mac_address or "") == 17, "it has a MAC from the pool")
    again = create_host.sync_detailed(client=client, body=request("generated"), idempotency_key="smoke-1")
    check(again.status_code == 201 and again.parsed.id == host.id, "the same Idempotency-Key gives the same host")
    check(again.headers.get("Idempotent-Replayed") == "true", "and says it is a replay")

    failed = create_host.sync_detailed(client=client, body=request("broken", storage_class="missing"))
    check(failed.status_code == 422 and isinstance(failed.parsed, ErrorBody), "a missing storage class is a 422 ErrorBody")
    check(failed.parsed.error.code == ErrorCode.STORAGECLASSNOTFOUND, "with a stable code")
    check(failed.parsed.error.step == "disk/root", "naming the step")
    check(failed.parsed.error.field == "disks[0].storageClass", "and the field")

    deadline = time.time() + 30
    while time.time() < deadline:
        view = get_host.sync(client=client, namespace="default", name="generated")
        if view.disks[0].phase == "Succeeded":
            break
        time.sleep(0.2)
    check(view.disks[0].phase == "Succeeded", "its disk is made")
    check(start_host.sync_detailed(client=client, namespace="default", name="generated").status_code == 202, "start")
    check(stop_host.sync_detailed(client=client, namespace="default", name="generated").status_code == 202, "stop")

    page = list_hosts.sync(client=client, limit=1)
    check(isinstance(page, HostList) and len(page.items) == 1 and page.continue_, "hosts list in pages")
    rest = list_hosts.sync(client=client, limit=1, continue_=page.continue_)
    check(rest.items[0].name != page.items[0].name, "the next page goes on")

    gone = delete_host.sync_detailed(client=client, namespace="default", name="generated")
    check(gone.status_code == 202 and gone.parsed.state == HostState.DELETING, "delete answers 202 Deleting")
    deadline = time.time() + 60
    while time.time() < deadline:
        view = get_host.sync(client=client, namespace="default", name="generated")
        if view.state == HostState.DELETED:
            break
        time.sleep(0.2)
    check(view.state == HostState.DELETED, "the record is marked Deleted")
    missing = get_host.sync_detailed(client=client, namespace="default", name="never")
    check(missing.status_code == 404 and missing.parsed.error.code == ErrorCode.NOTFOUND, "a missing host is a 404 ErrorBody")
    print("the generated client drove /bridge/v1")


main()
