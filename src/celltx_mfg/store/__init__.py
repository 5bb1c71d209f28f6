"""The GMP batch log: every run's records in one SQLite (or other SQLAlchemy) database.

Why it is built this way (REFERENCE.md section 5, ALCOA+ / 21 CFR 11 / EU Annex 11):

* **Whole runs only.** ``write_run`` writes a run row and every record row in ONE transaction, so a failed
  or killed write leaves nothing visible and a reader never sees half a run.
* **Append-only.** Record tables refuse UPDATE and DELETE (SQLite triggers); a correction is a new row in
  ``correction`` naming the row it supersedes, with a reason, an actor and a time.
* **Tamper-evident.** Every record row carries ``digest = sha256(previous digest + canonical row)``; the
  chain starts from a digest of (run id, scenario hash), runs over the run's tables in
  ``RunRecords.TABLES`` order, and ``run.chain_head`` holds the last link; the run row's own ``digest``
  seals its fields and the head. ``verify`` recomputes it and names the run, table and row of
  anything changed, removed or inserted after the fact, even with the triggers dropped.
* **Release is a signature.** A release row stores ``record_digest``: the digest of its batch's record
  (batch row, steps, QC results, deviations) when it was signed; ``verify`` reports the signature invalid
  when the record no longer matches. The row itself is signed by its signer role's key (HMAC-SHA256 in
  ``release_signature``), so a release cannot be re-signed without the qualified person's key.
* **Keyed seals and an anchored ledger.** sha256 can be recomputed by anyone holding the package, so
  every scenario, run and correction is also entered in ``ledger``, each entry an HMAC-SHA256 under a
  key kept outside the database (``keys``: ``CELLTX_KEY_FILE`` or ``~/.config/celltx/keys.json``) that
  links the entry before it. ``verify`` reports objects re-sealed without the key, objects missing from
  the ledger or the ledger's objects missing from the store, and seals by an unknown key; the newest
  head (``ledger_head``, printed by every writing command) kept outside the store catches the removal of
  the newest runs or of everything (``verify(expect_head=...)``).
* **Guards checked by their text.** ``guards`` installs the append-only triggers on every writable open
  (re-creating any that were dropped or replaced) and ``verify`` reports missing, replaced or disabled ones.

Modules: ``schema`` (tables, defined once), ``hashing`` (canonical rows and digests: the generated fast
code and its plain reference), ``open`` (connection policy), ``write`` (whole runs), ``corrections``,
``verify`` (with ``ledger_check``), ``keys``, ``seals``, ``guards``,
``read`` (frames for analysis) and ``export`` (CSV / Parquet, a batch's record). Everything
other modules use is importable from here.
"""

from ._common import (
    Problem,
    ProblemKind,
    StoreError,
    _iso,
    _now,
    _package_version,
    _q,
    _reason,
    _where,
    _write_txn,
    damaged_text,
    display_url,
)
from .corrections import record_correction
from .export import export_batch_csv, export_csv, export_parquet
from .hashing import (
    _correction_body,
    _genesis,
    _record_hex,
    _run_body,
    _run_seal,
    reference_body,
    reference_chain,
    scenario_digest,
)
from .keys import KEY_FILE_ENV, Keyring, default_key_file, key_file, key_id, load_keys
from .notes import ScenarioNote, note_history, scenario_notes, write_scenario_note
from .open import _sqlite_settings, open_store
from .read import (
    _run_rows,
    list_runs,
    list_scenarios,
    load_frames,
    load_run_meta,
    scenario_text,
    stored_replications,
)
from .schema import (
    _ALL_TABLES,
    _BATCH_RECORD_TABLES,
    _BY_NAME,
    _SPECS,
    _TABLE_DEFS,
    DEFAULT_DB,
    RECORD_TABLES,
    RELEASE_MODES,
    RESOURCE_KINDS,
    SCHEMA_VERSION,
    SIGNATURE_MEANINGS,
    CorrectionRow,
    RunRow,
    ScenarioRow,
    _append_only_ddl,
    _Spec,
)
from .seals import GENESIS_HEAD, entry_head, ledger_head, release_signature
from .verify import verify
from .write import _diagnose, _insert_sqlite, _write_run, write_run

__all__ = [
    "CorrectionRow", "DEFAULT_DB", "GENESIS_HEAD", "KEY_FILE_ENV", "Keyring", "Problem", "ProblemKind",
    "RECORD_TABLES", "RELEASE_MODES", "RESOURCE_KINDS", "RunRow", "SCHEMA_VERSION", "SIGNATURE_MEANINGS",
    "ScenarioRow", "StoreError", "damaged_text", "default_key_file", "display_url", "entry_head",
    "export_batch_csv", "export_csv", "export_parquet", "key_file", "key_id", "ledger_head", "list_runs",
    "list_scenarios", "stored_replications", "load_frames", "load_keys", "load_run_meta", "open_store",
    "record_correction",
    "reference_body", "reference_chain", "release_signature", "scenario_digest", "scenario_text", "verify",
    "write_run", "ScenarioNote", "note_history", "scenario_notes", "write_scenario_note",
    # private, used by tests and benchmarks
    "_ALL_TABLES", "_BATCH_RECORD_TABLES", "_BY_NAME", "_SPECS", "_TABLE_DEFS", "_Spec", "_append_only_ddl",
    "_correction_body", "_diagnose", "_genesis", "_insert_sqlite", "_iso", "_now", "_package_version", "_q",
    "_reason", "_record_hex", "_run_body", "_run_rows", "_run_seal", "_sqlite_settings", "_where", "_write_run",
    "_write_txn",
]


def __getattr__(name: str) -> object:
    """``write_forecast``, ``read_forecasts`` and ``read_forecast`` on first use: store/forecasts.py
    imports the forecast's result types, which the rest of the store does not need."""
    if name in ("write_forecast", "read_forecasts", "read_forecast", "StoredForecast"):
        from . import forecasts
        return getattr(forecasts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
