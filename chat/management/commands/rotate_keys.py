"""`manage.py rotate_keys` — re-encrypt every stored provider key with the first encryption key.

Put the new key first in FUSION_KEY_ENCRYPTION_KEYS (keep the old one after it), run this, then
drop the old key. Keys that none of the configured keys can decrypt are counted and left alone.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat.keys import keys_rotate


class Command(BaseCommand):
    help = "Re-encrypt users' provider keys with the first key of FUSION_KEY_ENCRYPTION_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated, unreadable = keys_rotate()
        self.stdout.write(f"Re-encrypted {rotated} key(s).")
        if unreadable:
            self.stderr.write(
                f"{unreadable} key(s) could not be decrypted with any configured key and were left as they are; "
                "their owners must save them again."
            )
