"""`tunery keys create|list|revoke`: the API keys `tunery serve` accepts; only hashes are stored."""

from __future__ import annotations

import typer
from rich.table import Table

from tunery.cli import app
from tunery.cli.output import console, err_console, handle_errors, print_json
from tunery.store import create_key, list_keys, open_store, revoke_key

keys_app = typer.Typer(help="Create, list and revoke API keys for `tunery serve`.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@handle_errors
def keys_create(
    name: str = typer.Option("", "--name", help="A label to recognise the key by."),
    admin: bool = typer.Option(False, "--admin", help="Allow adapter and key management."),
):
    """Create a key and print it once; only its hash is stored."""
    record, secret = create_key(open_store(), name, admin=admin)
    err_console.print(f"created {'admin ' if admin else ''}key {record.id}; it is shown only now:")
    print(secret)


@keys_app.command("list")
@handle_errors
def keys_list(json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List keys (ids, names, admin flag, revocation); secrets are never shown."""
    keys = list_keys(open_store())
    if json_output:
        print_json([k.__dict__ for k in keys])
        return
    table = Table("id", "name", "admin", "created", "revoked")
    for key in keys:
        table.add_row(key.id, key.name, "yes" if key.admin else "", key.created_at, key.revoked_at or "")
    console.print(table)


@keys_app.command("revoke")
@handle_errors
def keys_revoke(key_id: str = typer.Argument(..., help="The key id from `tunery keys list`.")):
    """Revoke a key; requests with it are refused from now on."""
    revoke_key(open_store(), key_id)
    console.print(f"revoked {key_id}")
