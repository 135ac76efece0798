"""Every registered method: one import line each (explicit registration)."""

from core.methods import awq as awq  # noqa: F401
from core.methods import bnb as bnb  # noqa: F401
from core.methods import cast as cast  # noqa: F401
from core.methods import fp8 as fp8  # noqa: F401
from core.methods import gptq as gptq  # noqa: F401
from core.methods import kv as kv  # noqa: F401
from core.methods import llm_int8 as llm_int8  # noqa: F401
from core.methods import magnitude as magnitude  # noqa: F401
from core.methods import rtn as rtn  # noqa: F401
from core.methods import smoothquant as smoothquant  # noqa: F401
from core.methods import sparsegpt as sparsegpt  # noqa: F401
from core.methods import w8a8 as w8a8  # noqa: F401
from core.methods import wanda as wanda  # noqa: F401
from core.methods import weight_only as weight_only  # noqa: F401
from core.methods import zeroquant as zeroquant  # noqa: F401
