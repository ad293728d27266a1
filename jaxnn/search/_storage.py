"""Where a study lives: storage URLs (drivers, passwords kept out of every message), opening a
storage, and telling the trials of live processes from those of dead ones (heartbeats).

Several processes — on one machine or many — share a study through its database. Each keeps its
``RUNNING`` trials alive by recording a heartbeat for each (Optuna's own ``trial_heartbeats``
table, written with the database's clock) every few seconds; a ``RUNNING`` trial whose heartbeat
is older than the grace period belongs to a process that was killed or cut off. Live trials of
other processes count as in flight (a worker does not ask for trials they are training); stale
ones count for nothing (they stay ``RUNNING``, and other trials take their place)."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import re
import threading
import time

import optuna

__all__ = ["StorageError", "mask_url", "storage_url", "open_storage"]

#: The extra that installs the PostgreSQL driver.
POSTGRES_EXTRA = "pip install 'jaxnn[postgres]'"
_PG_SCHEMES = ("postgresql", "postgres")
#: A URL's driver (``postgresql+DRIVER://``) and the module it imports.
_PG_DRIVERS = {"psycopg": "psycopg", "psycopg2": "psycopg2", "psycopg2cffi": "psycopg2cffi",
               "pg8000": "pg8000", "asyncpg": "asyncpg", "psycopg_async": "psycopg"}


class StorageError(RuntimeError):
    """A storage that cannot be opened or used: a missing database driver, a bad URL, a server
    that refuses the connection. The message names the URL with its password masked
    (:func:`mask_url`) and never contains the password."""

    @staticmethod
    def describe(error: BaseException, url: str) -> str:
        """One line saying why the database at ``url`` refused (``cannot connect: password
        authentication failed for user "u"``), without the password."""
        return _reason(error, url)


# --------------------------------------------------------------------------- URLs
def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: ``postgresql://user:***@host/db`` (also a
    ``password=`` query parameter). Anything that is not a URL is returned as is."""
    scheme, sep, rest = str(url).partition("://")
    if not sep:
        return str(url)
    main, q, query = rest.partition("?")
    at = main.rfind("@")  # the host follows the last @ (a password may hold an unescaped @)
    if at >= 0:
        user, colon, _ = main[:at].partition(":")
        main = (f"{user}:***" if colon else user) + main[at:]
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", query)
    return f"{scheme}{sep}{main}{q}{query}"


def _passwords(url: str) -> list[str]:
    """The password of ``url`` as written and decoded (to scrub from messages)."""
    from urllib.parse import parse_qsl, unquote

    scheme, sep, rest = str(url).partition("://")
    if not sep:
        return []
    main, _, query = rest.partition("?")
    found = []
    at = main.rfind("@")
    if at >= 0 and ":" in main[:at]:
        found.append(main[:at].partition(":")[2])
    found += [v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() == "password"]
    return sorted({p for pw in found for p in (pw, unquote(pw)) if p}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with ``url`` and its password masked (any occurrence of the password as a
    token of its own)."""
    text = str(text).replace(str(url), mask_url(url))
    for pw in _passwords(url):
        text = re.sub(r"(?<![\w])" + re.escape(pw) + r"(?![\w])", "***", text)
    return text


def storage_url(url: str) -> str:
    """The SQLAlchemy URL jaxnn opens for ``url``: a PostgreSQL URL without a driver
    (``postgresql://`` or ``postgres://``) gets one that is installed — psycopg 3
    (``postgresql+psycopg://``, what ``jaxnn[postgres]`` installs), else psycopg2. A PostgreSQL
    URL whose driver is missing is a :class:`StorageError` naming the extra; any other URL is
    returned as is."""
    scheme, sep, rest = str(url).partition("://")
    base, plus, driver = scheme.partition("+")
    if not sep or base.lower() not in _PG_SCHEMES:
        return str(url)
    if not plus:
        for module, name in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
            if importlib.util.find_spec(module) is not None:
                return f"postgresql+{name}://{rest}"
        raise StorageError(f"{mask_url(url)}: a PostgreSQL storage needs the psycopg driver: "
                           f"{POSTGRES_EXTRA}")
    module = _PG_DRIVERS.get(driver.lower())
    if module is not None and importlib.util.find_spec(module) is None:
        raise StorageError(f"{mask_url(url)}: the PostgreSQL driver {driver!r} is not "
                           f"installed: {POSTGRES_EXTRA} (and use postgresql://)")
    return f"postgresql+{driver}://{rest}"


def is_postgres(url: str) -> bool:
    return str(url).partition("://")[0].partition("+")[0].lower() in _PG_SCHEMES


def _reason(e: BaseException, url: str) -> str:
    """One line saying why the database refused, without the password: the driver's own
    message (``password authentication failed for user "u"``, ``database "d" does not exist``,
    ``Connection refused``) rather than SQLAlchemy's wrapping of it."""
    orig = getattr(e, "orig", None) or e
    lines = [s.strip() for s in str(orig).strip().splitlines() if s.strip()]
    msg = lines[0] if lines else type(orig).__name__
    msg = re.sub(r"^\([\w.]+\)\s*", "", msg)  # SQLAlchemy's "(psycopg.OperationalError) "
    msg = re.sub(r"^connection failed:\s*", "", msg)
    msg = re.sub(r"^connection to server (at|on) .*? failed:\s*", "", msg)
    msg = re.sub(r"^(FATAL|ERROR):\s*", "", msg)
    if type(e).__name__ in ("OperationalError", "InterfaceError"):
        msg = f"cannot connect: {msg}"
    return scrub(msg, url)


# --------------------------------------------------------------------------- opening
def open_storage(storage: str | optuna.storages.BaseStorage | None):
    """An Optuna storage from a URL (``sqlite:///path.db``, ``postgresql://user:pw@host/db``,
    ``mysql://...``), a storage object (returned as is) or ``None`` (in memory).

    PostgreSQL URLs get an installed driver (:func:`storage_url`); connections are checked
    before use (a server restarted between rounds is reconnected) and give up after 15 s.
    SQLite files are opened in write-ahead-log mode (``journal_mode=WAL``,
    ``synchronous=NORMAL``: a committed trial survives a killed process; writes cost a few
    milliseconds instead of a synchronous flush each) with a 60 s lock timeout, so several
    processes on one machine can share the file. A storage that cannot be opened is a
    :class:`StorageError` (the URL's password masked)."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(storage, str):
        return storage
    url = storage_url(storage)
    try:
        if url.startswith("sqlite"):
            return _sqlite(url)
        kwargs: dict = {"pool_pre_ping": True}
        if is_postgres(url) and "connect_timeout" not in url:
            kwargs["connect_args"] = {"connect_timeout": 15}
        return _rdb(url, kwargs)
    except StorageError:
        raise
    except Exception as e:  # a bad URL, a missing driver, a server that refuses
        raise StorageError(f"{mask_url(storage)}: {_reason(e, storage)}") from None


def _sqlite(url: str):
    import sqlalchemy

    rdb = _rdb(url, {"connect_args": {"timeout": 60}})

    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(rdb.engine, "connect", _pragmas)
    rdb.engine.dispose()  # connections opened from now on get the pragmas
    return rdb


def _rdb(url: str, engine_kwargs: dict, attempts: int = 5):
    """``RDBStorage(url)``. Processes that open a new database at the same moment race to create
    its tables (one of them fails on the schema-version row); the loser opens it again once the
    tables exist. A server that refuses the connection fails at once."""
    import sqlalchemy

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except sqlalchemy.exc.IntegrityError:
            if attempt == attempts - 1:
                raise
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as e:
            # A table another process has just created (SQLite: "table alembic_version already
            # exists"; PostgreSQL: 'relation "studies" already exists', a ProgrammingError) or
            # SQLite's "database is locked" is the race; a server's refusal is final.
            race = "already exists" in str(e) or (url.startswith("sqlite") and "locked" in str(e))
            if attempt == attempts - 1 or not race:
                raise
        time.sleep(0.2 * (attempt + 1))


# --------------------------------------------------------------------------- heartbeats
def _rdb_of(storage):
    """The :class:`optuna.storages.RDBStorage` behind ``storage`` (a study's storage may be
    wrapped in a cache), or ``None``."""
    inner = getattr(storage, "_backend", storage)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


class Heartbeat:
    """Keeps this process's ``RUNNING`` trials alive: :meth:`add` records a trial's heartbeat at
    once, and a thread records every added trial's again each ``interval`` seconds until
    :meth:`discard` (or leaving the ``with`` block). Only a database storage keeps heartbeats;
    with any other storage this does nothing."""

    def __init__(self, storage, interval: float):
        self._rdb = _rdb_of(storage)
        self._interval = float(interval)
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self._rdb is not None:
            self._thread = threading.Thread(target=self._run, name="jaxnn-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def add(self, *trial_ids: int) -> None:
        """Record the heartbeats of ``trial_ids`` now (one statement for all), and keep them up."""
        if self._rdb is None or not trial_ids:
            return
        self._beat(*trial_ids)
        with self._lock:
            self._ids.update(trial_ids)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _beat(self, *trial_ids: int) -> None:
        from jaxnn.search import _writes

        with contextlib.suppress(Exception):  # a lost beat is retried; the round reports errors
            if _writes.record_heartbeats(self._rdb, trial_ids):
                return
            for trial_id in trial_ids:  # Optuna's own call, one trial at a time
                self._rdb.record_heartbeat(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = sorted(self._ids)
            if ids:
                self._beat(*ids)


class Liveness:
    """Which ``RUNNING`` trials of a study belong to live processes.

    With a database storage, a ``RUNNING`` trial is live while its heartbeat is at most
    ``grace`` seconds old (both times read from the database's clock, so the hosts' clocks
    need not agree); a trial without a heartbeat yet (asked a moment ago, or by a jaxnn without
    heartbeats) is live until this process has seen it so for ``grace`` seconds. With any other
    storage (in memory: one process) no other process's trial is live."""

    def __init__(self, storage, grace: float):
        self._rdb = _rdb_of(storage)
        self.grace = float(grace)
        self._first_seen: dict[int, float] = {}

    def live(self, running) -> list:
        """The live ones among ``running`` (FrozenTrials in state ``RUNNING``)."""
        running = list(running)
        if self._rdb is None or not running:
            return []
        beats, now = self._heartbeats([t._trial_id for t in running])
        clock = time.monotonic()
        out = []
        for t in running:
            beat = beats.get(t._trial_id)
            if beat is not None and now is not None:
                if (now - beat).total_seconds() <= self.grace:
                    out.append(t)
            elif clock - self._first_seen.setdefault(t._trial_id, clock) <= self.grace:
                out.append(t)
        return out

    def _heartbeats(self, trial_ids: list[int]):
        import sqlalchemy as sa

        table = sa.Table("trial_heartbeats", sa.MetaData(), sa.Column("trial_id", sa.Integer),
                         sa.Column("heartbeat", sa.DateTime))
        with self._rdb.engine.connect() as conn:
            now = _naive(conn.execute(sa.select(sa.func.now())).scalar())
            rows = conn.execute(sa.select(table.c.trial_id, table.c.heartbeat)
                                .where(table.c.trial_id.in_(trial_ids))).all()
        return {int(i): _naive(b) for i, b in rows}, now


def _naive(value) -> datetime.datetime | None:
    """A database timestamp as a naive datetime (SQLite returns text; PostgreSQL's ``now()``
    carries a time zone its stored heartbeats do not: both are the server's local time)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return value.replace(tzinfo=None)
