"""Checkpointer guards: a failed checkpoint write is a one-line error, never a traceback or a
silently kept old answer; a corrupt sessions database is one line naming the file.

`guarded(SaverClass, where)` subclasses a LangGraph saver so that
- a failing `put` / `put_writes` (read-only file, full disk, a value SQLite cannot hold) raises
  `CheckpointError` ("this turn could not be saved ..."), which `Session._run` reports as the
  turn's error;
- corruption found on any read or write raises `DatabaseFileError` naming the file.
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from typing import Any

from tools.dbfile import is_corruption, unreadable
from tools.errors import AtelierError, CheckpointError


def save_failed(where: str, err: BaseException) -> AtelierError:
    if is_corruption(err):
        return unreadable(where, "sessions", str(err))
    reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return CheckpointError(f"this turn could not be saved to the sessions database {where} ({reason}); "
                           "its answer was not kept — send the message again")


class _Guarded:
    """Mixed in before a LangGraph saver class (see `guarded`)."""

    atelier_where: str = "?"

    def put(self, *args: Any, **kwargs: Any):
        try:
            return super().put(*args, **kwargs)
        except AtelierError:
            raise
        except Exception as err:  # noqa: BLE001 - every write failure is the one-line error
            raise save_failed(self.atelier_where, err) from err

    def put_writes(self, *args: Any, **kwargs: Any):
        try:
            return super().put_writes(*args, **kwargs)
        except AtelierError:
            raise
        except Exception as err:  # noqa: BLE001
            raise save_failed(self.atelier_where, err) from err

    def get_tuple(self, *args: Any, **kwargs: Any):
        try:
            return super().get_tuple(*args, **kwargs)
        except sqlite3.DatabaseError as err:
            if is_corruption(err):
                raise unreadable(self.atelier_where, "sessions", str(err)) from None
            raise

    def list(self, *args: Any, **kwargs: Any):
        try:
            yield from super().list(*args, **kwargs)
        except sqlite3.DatabaseError as err:
            if is_corruption(err):
                raise unreadable(self.atelier_where, "sessions", str(err)) from None
            raise


@lru_cache(maxsize=None)
def _guarded_class(saver_cls: type) -> type:
    return type(f"Guarded{saver_cls.__name__}", (_Guarded, saver_cls), {})


def guarded(saver_cls: type, where: str, *args: Any, **kwargs: Any):
    """An instance of `saver_cls(*args, **kwargs)` with the guards above; `where` names the database."""
    saver = _guarded_class(saver_cls)(*args, **kwargs)
    saver.atelier_where = where
    return saver
