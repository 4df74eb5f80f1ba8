"""mlox-client: one import connects a team's code to every service of its mlox stack.

    import mlox_client

    stack = mlox_client.connect()            # from env, a profile, or inside the stack
    stack.s3.client()                        # boto3; stack.s3.storage_options for pandas
    stack.postgres.engine()                  # SQLAlchemy (an SSH tunnel from a laptop)
    stack.model("churn").predict(df)

Importing this package loads no integration library; each loads when first used, from the
extra that names it (``pip install 'mlox-client[mlflow,s3,feast,airflow,labelstudio,sql]'``).
"""

from mlox_client._secret import Secret
from mlox_client.errors import (
    InsecureTLS, MissingExtra, MloxClientError, NotConfigured, NotInStack, ProfileError, RemoteError, SettingMissing,
    TunnelError,
)
from mlox_client.stack import Stack, connect

__version__ = "0.1.0"

__all__ = [
    "InsecureTLS", "MissingExtra", "MloxClientError", "NotConfigured", "NotInStack", "ProfileError", "RemoteError",
    "Secret", "SettingMissing", "Stack", "TunnelError", "__version__", "connect",
]
