"""Every environment variable photonstream reads, or sets for the processes it starts: one registry.

The modules that read a variable import its name from here (``os.environ.get(DATA_ROOT_ENV)``), and
``docs/settings.md`` is made from ``VARIABLES`` (``python -m photonstream.config.reference``), so the documented list
and the code cannot drift apart; ``tests/config/test_settings_reference.py`` checks that every read in the package
names a variable registered here. This module imports nothing of photonstream: any module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Side = Literal["client", "service", "job", "third-party", "install"]


@dataclass(frozen=True)
class EnvironmentVariable:
    """One variable: who reads it (``side``, ``read_by``), what it means, and the setting it fills, if any."""

    name: str
    side: Side
    read_by: str
    description: str
    setting: str | None = None  # "ApiSettings.ca_dir": the settings key this variable gives a value to


# client and command line
API_URL_ENV = "PHOTONSTREAM_URL"
CLIENT_CERT_ENV = "PHOTONSTREAM_CERT"
CLIENT_KEY_ENV = "PHOTONSTREAM_KEY"
CLIENT_CA_ENV = "PHOTONSTREAM_CA"
TOKEN_ENV = "PHOTONSTREAM_TOKEN"
# service side: operators' commands
CA_DIR_ENV = "PHOTONSTREAM_CA_DIR"
DATABASE_ENV = "PHOTONSTREAM_DB"
STATE_DIR_ENV = "PHOTONSTREAM_STATE_DIR"
XDG_STATE_HOME_ENV = "XDG_STATE_HOME"
DEMO_PID_ENV = "PHOTONSTREAM_DEMO_PID"
# jobs the service starts
STREAM_ID_ENV = "PHOTONSTREAM_STREAM_ID"
REPORT_URL_ENV = "PHOTONSTREAM_REPORT_URL"
REPORT_SECRET_ENV = "PHOTONSTREAM_REPORT_SECRET"
REPORT_CA_ENV = "PHOTONSTREAM_REPORT_CA"
REPORT_CERT_ENV = "PHOTONSTREAM_REPORT_CERT"
REPORT_KEY_ENV = "PHOTONSTREAM_REPORT_KEY"
REPORT_INTERVAL_ENV = "PHOTONSTREAM_REPORT_INTERVAL_S"
SECRETS_FILE_ENV = "PHOTONSTREAM_JOB_SECRETS_FILE"
BUFFER_CREDENTIALS_ENV = "PHOTONSTREAM_BUFFER_CREDENTIALS"
DATA_ROOT_ENV = "PHOTONSTREAM_DATA_ROOT"
JOB_ID_ENV = "PHOTONSTREAM_JOB_ID"
POOL_ENV = "PHOTONSTREAM_POOL"
WORKER_ENV = "PHOTONSTREAM_WORKER"
# other software's variables photonstream reads (or sets for its children)
PSANA_DATA_ENV = "SIT_PSDM_DATA"
PVA_ADDR_LIST_ENV = "EPICS_PVA_ADDR_LIST"
PVA_AUTO_ADDR_LIST_ENV = "EPICS_PVA_AUTO_ADDR_LIST"
MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
OMP_NUM_THREADS_ENV = "OMP_NUM_THREADS"
THREAD_VARIABLES = (OMP_NUM_THREADS_ENV, "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
INSTALL_PYTHON_ENV = "PHOTONSTREAM_PYTHON"

_CLIENT = "photonstream request, photonstream status, PhotonstreamClient.from_env()"
_JOB = "set by the API's launcher for each stream's job"

VARIABLES: tuple[EnvironmentVariable, ...] = (
    EnvironmentVariable(API_URL_ENV, "client", _CLIENT, "the API's base URL, e.g. https://api.example:8443 (--url)"),
    EnvironmentVariable(
        CLIENT_CERT_ENV,
        "client",
        _CLIENT,
        "your client certificate (PEM) for mutual TLS (--cert), with PHOTONSTREAM_KEY",
    ),
    EnvironmentVariable(CLIENT_KEY_ENV, "client", _CLIENT, "the private key (PEM) of PHOTONSTREAM_CERT (--key)"),
    EnvironmentVariable(
        CLIENT_CA_ENV,
        "client",
        _CLIENT,
        "CA certificate (PEM) the client verifies the API's certificate with (--ca-cert; unset: the system's CAs)",
    ),
    EnvironmentVariable(
        TOKEN_ENV, "client", _CLIENT, "bearer token sent as 'Authorization: Bearer ...' (--token); instead of a cert"
    ),
    EnvironmentVariable(
        CA_DIR_ENV,
        "service",
        "photonstream ca ..., photonstream serve --ca",
        "our CA's directory (ca.crt, crl.pem, token.jwks.json); unset: ./ca for 'ca' commands, none for serve",
        setting="ApiSettings.ca_dir",
    ),
    EnvironmentVariable(
        DATABASE_ENV,
        "service",
        "photonstream db ..., photonstream serve --db",
        "SQLAlchemy URL of the API's database, e.g. postgresql://user@db.example/photonstream; unset: SQLite in "
        "the state directory",
        setting="ApiSettings.database_url",
    ),
    EnvironmentVariable(
        STATE_DIR_ENV,
        "service",
        "job backends made without a state_dir (Python API, tools)",
        "directory whose jobs/ subdirectory keeps a job backend's records; the API's backends use "
        "state_dir/jobs instead. Unset: $XDG_STATE_HOME/photonstream/jobs",
    ),
    EnvironmentVariable(
        XDG_STATE_HOME_ENV,
        "third-party",
        "job backends made without a state_dir",
        "base of the default job state directory when PHOTONSTREAM_STATE_DIR is unset (unset: ~/.local/state)",
    ),
    EnvironmentVariable(
        DEMO_PID_ENV,
        "service",
        "processes photonstream demo starts",
        "the demo's process id: its children ask the kernel to stop them when it dies (internal; set by the demo)",
    ),
    EnvironmentVariable(
        STREAM_ID_ENV, "job", _JOB, "the stream's id; a pipeline run with it logs the host and pid it runs on"
    ),
    EnvironmentVariable(
        REPORT_URL_ENV,
        "job",
        _JOB,
        "where the pipeline POSTs its signed progress reports (from ApiSettings.report_url); unset: no reports",
    ),
    EnvironmentVariable(
        REPORT_SECRET_ENV,
        "job",
        "the job (from its secrets file; the variable is taken too)",
        "per-stream HMAC secret that signs the progress reports; never set in the job's environment by the API",
    ),
    EnvironmentVariable(
        REPORT_CA_ENV, "job", _JOB, "CA file the job verifies the API's certificate with (ApiSettings.report_ca_file)"
    ),
    EnvironmentVariable(
        REPORT_CERT_ENV, "job", _JOB, "client certificate the job reports with (ApiSettings.report_client_cert)"
    ),
    EnvironmentVariable(REPORT_KEY_ENV, "job", _JOB, "its private key (ApiSettings.report_client_key)"),
    EnvironmentVariable(
        REPORT_INTERVAL_ENV,
        "job",
        "the pipeline's reporter",
        "seconds between progress reports (unset or not a number: 1.0; at least 0.05); a phase change goes at once",
    ),
    EnvironmentVariable(
        SECRETS_FILE_ENV,
        "job",
        "set by the job backends; read by pipelines and workers",
        "path of the job's 0600 JSON file of secrets (report secret, buffer credential); deleted when the stream ends",
    ),
    EnvironmentVariable(
        BUFFER_CREDENTIALS_ENV,
        "job",
        "the buffer handler, photonstream consume (pool workers)",
        "the buffer credential (JSON: curve keys or token) a job writes or reads with; the API puts it in the "
        "secrets file, a hand-started producer may set the variable",
    ),
    EnvironmentVariable(
        DATA_ROOT_ENV,
        "job",
        "sources and constant loaders in the job",
        "the experiment's data directory (ApiSettings.data_root filled in): files outside it are refused; "
        "unset (a pipeline run by hand): nothing is checked",
    ),
    EnvironmentVariable(JOB_ID_ENV, "job", "set by the local backend", "the job's id in the local backend"),
    EnvironmentVariable(POOL_ENV, "job", "set for elastic pool workers", "the name of the worker's pool"),
    EnvironmentVariable(WORKER_ENV, "job", "set for elastic pool workers", "the worker's name within its pool"),
    EnvironmentVariable(
        PSANA_DATA_ENV,
        "third-party",
        "the psana source",
        "root of LCLS data (psana's own variable) when the source gives no dir (unset: /reg/d/psdm)",
    ),
    EnvironmentVariable(
        PVA_ADDR_LIST_ENV,
        "third-party",
        "the pva source (pvaccess)",
        "EPICS pvAccess servers to search, 'host[:port] ...'; the source's address_list sets it (and "
        f"{PVA_AUTO_ADDR_LIST_ENV}=NO) for the process's pvaccess client",
    ),
    EnvironmentVariable(
        PVA_AUTO_ADDR_LIST_ENV,
        "third-party",
        "the pva source (pvaccess)",
        "NO: search only the address list (set with address_list); YES: also broadcast on every interface",
    ),
    *(
        EnvironmentVariable(
            name,
            "third-party",
            "photonstream run",
            "set by an MPI launcher: the number of ranks; above 1, the run imports mpi4py and splits the events",
        )
        for name in MPI_SIZE_VARIABLES
    ),
    EnvironmentVariable(
        OMP_NUM_THREADS_ENV,
        "third-party",
        "jobs, photonstream demo, the xtal consumers (cctbx)",
        "OpenMP threads per process: a job gets resources.cores_per_rank unless its environment sets it; the demo's "
        "processes, and any process once cctbx is loaded, get 1 unless it is already set",
    ),
    *(
        EnvironmentVariable(
            name,
            "third-party",
            "jobs, photonstream demo",
            "BLAS threads per process: a job gets resources.cores_per_rank unless its environment sets it; the "
            "demo's processes get 1 unless it is already set",
        )
        for name in THREAD_VARIABLES[1:]
    ),
    EnvironmentVariable(
        INSTALL_PYTHON_ENV, "install", "scripts/install", "the interpreter the virtual environment is made with"
    ),
)

BY_NAME: dict[str, EnvironmentVariable] = {variable.name: variable for variable in VARIABLES}
