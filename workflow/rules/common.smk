# Configuration validation, the plan of the experiments, the wildcard constraints and the rules' input functions.
# No rules here.  What is computed from which files is csa_rerank.plan (pure functions of the config, tested in
# tests/test_plan.py); the datasets and methods are the entries of csa_rerank.registry.  The functions below only
# unpack wildcards: Snakemake calls them with the job's wildcards, the plan takes plain values.
from pathlib import Path

from snakemake.utils import validate

from csa_rerank import code_version, download, registry, snakemake_locks
from csa_rerank.plan import Plan, alternatives, paths

# a run that ends removes its own locks only, not those of the runs still going (docs/snakemake-lock-defect.md)
snakemake_locks.keep_other_runs_locks()

validate(config, schema="../schemas/config.schema.yaml")

# checks what the schema cannot (names defined in the config or in the registry), then plans every job
plan = Plan(config)
# learned methods: the module whose fit() trains them -> the method whose `fit` settings it uses (LAttQE's model
# also serves LAttDBA + LAttQE)
FIT_MODULES = registry.fit_modules()


wildcard_constraints:
    **plan.wildcard_constraints(),


# ---------------------------------------------------------------------------------------------------------------
# the code behind a job (csa_rerank.code_version): a param of every rule, so that a job reruns when the package
# code its script runs changes, and only then
SCRIPTS = Path(workflow.main_snakefile).parent / "workflow" / "scripts"


def script_code(script, *modules):
    return code_version.script_digest(SCRIPTS / script, modules)


def method_code(wildcards):
    """A compared method's job also runs the method's own module, imported by name."""
    method = registry.method(plan.method_of_slug[wildcards.method])
    return script_code("rerank_method.py", method.module)


def fit_code(wildcards):
    return script_code("fit_method.py", f"csa_rerank.methods.{wildcards.module}")


# ---------------------------------------------------------------------------------------------------------------
# descriptors (workflow/rules/extract.smk, download.smk, demo.smk, export.smk)
def extract_inputs(wildcards):
    return plan.extract_inputs(wildcards.dataset, wildcards.network)


def extract_kind(wildcards):
    return plan.dataset_kind(wildcards.dataset)


def imported_descriptors(wildcards):
    return plan.imported_descriptors(wildcards.imported, wildcards.network)


def imported_kind(wildcards):
    return plan.dataset_kind(wildcards.imported)


def network_spec(wildcards):
    return plan.networks[wildcards.network]


def shard_inputs(wildcards):
    return plan.extract_inputs(plan.distractors, wildcards.network)


def shard_range(wildcards):
    return plan.shard_range(int(wildcards.shard))


def distractor_shards(wildcards):
    return plan.distractor_shards(wildcards.network)


def unpacked_archives(wildcards):
    return plan.unpacked_archives(wildcards.image_folder)


def demo_seed(wildcards):
    return plan.demo_seed(wildcards.dataset)


def export_input(wildcards):
    return plan.export_input(wildcards.layout, wildcards.network)


# ---------------------------------------------------------------------------------------------------------------
# first round, CSA training and re-ranking (knn.smk, affinity.smk, train.smk, rerank.smk)
def descriptor_files(wildcards):
    return plan.descriptor_files(wildcards.testset, wildcards.network)


def testset_ground_truth(wildcards):
    return plan.ground_truth(wildcards.testset)


def training_inputs(wildcards):
    return plan.training_inputs(wildcards.model)


def training_priority(wildcards):
    return plan.training_priority(wildcards.model)


def reranker_config(wildcards):
    return plan.reranker_config(wildcards.model)


def training_hyperparameters(wildcards):
    return plan.training_hyperparameters(wildcards.model)


# ---------------------------------------------------------------------------------------------------------------
# compared methods (methods.smk)
def method_inputs(wildcards):
    return plan.method_inputs(wildcards.testset, wildcards.network, wildcards.method)


def method_label(wildcards):
    return plan.method_of_slug[wildcards.method]


def method_gpus(wildcards):
    return plan.method_gpus(wildcards.method)


def method_mem_mb(wildcards, input, attempt):
    return plan.method_mem_mb(wildcards.method, input.size_mb, attempt)


def method_runtime(wildcards, input, attempt):
    return plan.method_runtime(wildcards.method, input.size_mb, attempt)


def method_settings(wildcards):
    return plan.method_settings(wildcards.method)


def dsm_settings(wildcards):
    return plan.image_settings(wildcards.method, wildcards.network)


def fit_method_label(wildcards):
    return FIT_MODULES[wildcards.module]


def fit_settings(wildcards):
    return plan.fit_settings(wildcards.module)


# ---------------------------------------------------------------------------------------------------------------
# tables and figures (tables.smk, figures.smk): layouts with their files' pathvars resolved, ready to be params
def table_layout_of(wildcards):
    return plan.table_layout(wildcards.table, workflow.pathvars.apply)


def table_inputs(wildcards):
    return plan.table_inputs(wildcards.table, workflow.pathvars.apply)


def figure_layout_of(wildcards):
    return plan.figure_layout(wildcards.figure, workflow.pathvars.apply)


def figure_inputs(wildcards):
    return plan.figure_inputs(wildcards.figure, workflow.pathvars.apply)


# ---------------------------------------------------------------------------------------------------------------
# per-query analysis and Figure 3 (analysis.smk)
def per_query_inputs(wildcards):
    return plan.per_query_inputs(wildcards.testset)


def per_query_rows(wildcards):
    return plan.per_query_rows(wildcards.testset)


def fig3_inputs(wildcards):
    return plan.qualitative_inputs(plan.fig3["testset"])


def gallery_inputs(wildcards):
    return plan.qualitative_inputs(wildcards.testset)
