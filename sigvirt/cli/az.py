"""`sigvirt feature|provider|group …`: az commands a pasted script runs before the ones that
matter. sigvirt has no feature flags, resource providers or resource groups (a group is a
name in resource ids), so each does nothing, says so in one line on stderr, and exits 0."""

from __future__ import annotations

from typing import Annotated

import typer

from sigvirt.catalog import names
from sigvirt.catalog.azureid import SUBSCRIPTION
from sigvirt.cli.render import Output, OutputOpt, emit, note

feature_app = typer.Typer(help="az feature: nothing to register here.", no_args_is_help=True)
provider_app = typer.Typer(help="az provider: nothing to register here.", no_args_is_help=True)
group_app = typer.Typer(help="az group: groups are names in ids only.", no_args_is_help=True)

NamespaceOpt = Annotated[str, typer.Option("--namespace", help="e.g. Microsoft.Compute")]
ProviderOpt = Annotated[str, typer.Option("--namespace", "-n", help="e.g. Microsoft.Compute")]
NameOpt = Annotated[str, typer.Option("--name", "-n", help="name")]
GroupNameOpt = Annotated[str, typer.Option("--name", "-n", "--resource-group", "-g", help="name")]
LocationOpt = Annotated[str | None, typer.Option("--location", "-l", help="ignored")]


def _said(what: str) -> None:
    note(f"sigvirt: {what}")


@feature_app.command("register")
def feature_register(
    namespace: NamespaceOpt, name: NameOpt, output: OutputOpt = Output.table
) -> None:
    """Does nothing: sigvirt has every feature it has."""
    _said(f"feature {namespace}/{name}: nothing to register (sigvirt has no feature flags)")
    emit(_feature(namespace, name), output)


@feature_app.command("show")
def feature_show(namespace: NamespaceOpt, name: NameOpt, output: OutputOpt = Output.table) -> None:
    """Shows a feature as registered (there is nothing else)."""
    emit(_feature(namespace, name), output)


def _feature(namespace: str, name: str) -> dict[str, object]:
    return {
        "id": f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Features/providers/"
        f"{namespace}/features/{name}",
        "name": f"{namespace}/{name}",
        "properties": {"state": "Registered"},
        "type": "Microsoft.Features/providers/features",
    }


@provider_app.command("register")
def provider_register(
    namespace: ProviderOpt,
    wait: Annotated[bool, typer.Option("--wait", help="ignored")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Does nothing: there are no resource providers to register."""
    _said(f"provider {namespace}: nothing to register (sigvirt has no resource providers)")


@provider_app.command("show")
def provider_show(namespace: ProviderOpt, output: OutputOpt = Output.table) -> None:
    """Shows a provider as registered."""
    emit(
        {
            "id": f"/subscriptions/{SUBSCRIPTION}/providers/{namespace}",
            "namespace": namespace,
            "registrationState": "Registered",
        },
        output,
    )


def _group(name: str, location: str | None) -> dict[str, object]:
    return {
        "id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}",
        "name": name,
        "location": location or "local",
        "properties": {"provisioningState": "Succeeded"},
        "type": "Microsoft.Resources/resourceGroups",
        "tags": None,
    }


@group_app.command("create")
def group_create(
    name: GroupNameOpt,
    location: LocationOpt = None,
    tags: Annotated[list[str] | None, typer.Option("--tags", help="ignored")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Does nothing: a resource group is only a name in sigvirt's ids (-g on each command)."""
    names.resource_group(name)
    _said(f"group {name}: nothing to create (a resource group is a name in ids here)")
    emit(_group(name, location), output)


@group_app.command("show")
def group_show(name: GroupNameOpt, output: OutputOpt = Output.table) -> None:
    """Shows a group as if it existed: every name does."""
    names.resource_group(name)
    emit(_group(name, None), output)


@group_app.command("list")
def group_list(output: OutputOpt = Output.table) -> None:
    """Lists no groups: sigvirt keeps none."""
    emit([], output, title="resource groups")


@group_app.command("delete")
def group_delete(
    name: GroupNameOpt,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="ignored")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="ignored")] = False,
) -> None:
    """Does nothing: deleting a name deletes nothing (delete the galleries and VMs)."""
    names.resource_group(name)
    _said(f"group {name}: nothing to delete (delete its galleries and VMs themselves)")
