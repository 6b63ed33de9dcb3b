"""The plan of one configuration: what to compute and from which files, as pure functions of the config dict.

Built once from the validated configuration (workflow/rules/common.smk); the rules' input functions and params
are thin calls of its methods, which the unit tests (tests/test_plan.py) call directly.  No Snakemake, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from csa_rerank import download, registry

from . import analysis, checks, figures, models, paths, resources, tables
from .canonical import canonical


def alternatives(names: Iterable[str]) -> str:
    """A regex matching one of the names; longest first, so that no name matches as the prefix of a longer one."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


def _same(path: str) -> str:
    return path


class Plan:
    def __init__(self, config: dict):
        checks.check_config(config)
        # every mapping's keys sorted, so that no param depends on the order of a YAML mapping (.canonical)
        self.config = config = canonical(config)
        datasets = config["datasets"]
        # datasets of the configuration's own (datasets.own), beside the registry's
        self.own_datasets = {name: registry.own_dataset(name, spec) for name, spec in datasets.get("own", {}).items()}
        self.test_sets: list[str] = list(datasets["test"])
        self.distractors: str | None = datasets.get("distractors")
        self.training_set: str = datasets["training"]
        # The dataset whose descriptors fit the post-whitening (centre, learned) of the networks that have one:
        # the training set (its train split's qidxs/pidxs) or cirtorch's whitening set (its own pairs).
        self.whitening_set: str = datasets.get("whitening", self.training_set)
        self.networks: dict[str, dict] = config["networks"]
        self.experiments = experiments = config["experiments"]
        self.first_round, self.K, self.L = experiments["first_round"], experiments["K"], experiments["L"]
        # rows of tables 3 and 5, in the paper's order
        self.training_sets: dict[str, list[str]] = _in_paper_order("table3", experiments["training_sets"])
        self.default_training_set: str = experiments["default_training_set"]
        self.cross_features: dict[str, str] = _in_paper_order("supp_table1", experiments.get("cross_features", {}))
        # Table 4 shows the whitened features of supplementary table 1 under labels without "-W"; its own if set.
        self.cross_features_table4 = (
            _in_paper_order("table4", experiments["cross_features_table4"])
            if experiments.get("cross_features_table4")
            else self.cross_features
        )
        # Extraction settings that change descriptors (rerun triggers); the shard size only cuts the jobs.
        self.extraction_settings = {k: v for k, v in config["extraction"].items() if k != "shard_size"}
        # The distractors are extracted in shards of extraction.shard_size images, one job each, merged into one file.
        self.distractor_images = checks.distractor_images(config)
        self.shard_size: int = config["extraction"]["shard_size"]
        self.n_shards = -(-self.distractor_images // self.shard_size) if self.distractors else 0
        # Evaluation sets: each test set alone and, with distractors configured, with them appended to its database.
        self.eval_sets = self.test_sets + [self.with_distractors(t) for t in self.test_sets if self.distractors]
        # datasets given as descriptor files: rule import_descriptors instead of extract
        used = [*self.test_sets, self.training_set]
        self.imported = [name for name in used if self.dataset(name).descriptors]
        self.models = models.table_models(config)
        self.figure_sweeps, variants = models.figure_sweeps(config)
        self.models.update(variants)
        self.figures = list(self.figure_sweeps)
        self.train_topk = models.train_topk(config, self.models)
        # Compared methods (rule rerank_method), config label -> parameters, and their names in paths.
        self.methods: dict[str, dict] = config.get("methods", {})
        self.method_of_slug = {registry.method(label).slug: label for label in self.methods}
        # Columns of the database graph (rule db_graph) that the graph-reading methods read, at most
        self.graph_widths = self._graph_widths()
        self.tables = list(tables.TABLES)
        # Descriptor files in the layout of the authors' code (csa_rerank.export): CSA's data folder -> dataset.
        self.export_layouts = {f"test/{t}": t for t in self.test_sets} | {"train": self.training_set}
        if self.distractors:
            self.export_layouts["r1m"] = self.distractors
        # What the download rules fetch; None for the demo, which generates its data.
        has_downloads = "downloads" in config and not config.get("demo")
        self.downloads = download.plan_downloads(config["downloads"]) if has_downloads else None
        # Figure 3 and the per-query analysis (checked now: its settings name table-5 rows)
        self.fig3 = analysis.fig3_settings(self)
        self.compared_rows = analysis.compared_rows(self)

    def with_distractors(self, testset: str) -> str:
        return f"{testset}+{self.distractors}"

    def anchor_model(self, anchors: int) -> str:
        """The model of table 2 with L anchors: the default model at the configured L."""
        return self.default_training_set if anchors == self.L else f"{self.default_training_set}-L{anchors}"

    def wildcard_constraints(self) -> dict[str, str]:
        models_pattern = alternatives(self.models)
        methods_pattern = alternatives(self.method_of_slug) or "none"
        extracted = self.test_sets + list(dict.fromkeys([self.training_set, self.whitening_set]))
        return {
            # the distractors are extracted in shards (rules extract_shard, merge_shards), every other set by extract
            "dataset": alternatives([name for name in extracted if name not in self.imported]),
            "imported": alternatives(self.imported) or "none",
            "testset": alternatives(self.eval_sets),
            # a network, or a network's first-round lists re-ranked by a compared method (rule rerank_method)
            "network": f"({alternatives(self.networks)})(~({methods_pattern}))?",
            "method": methods_pattern,
            "model": models_pattern,
            "reranker": f"affinity_feature|csa-({models_pattern})",
            "row": alternatives(self.compared_rows) or "none",
            "K": r"\d+",
            "L": r"\d+",
        }

    # -----------------------------------------------------------------------------------------------------------
    # data and descriptors
    def dataset(self, name: str) -> registry.Dataset:
        """The registry's entry of a dataset, or the configuration's own (datasets.own)."""
        return self.own_datasets.get(name) or registry.dataset(name)

    def raw_data(self, dataset: str) -> dict[str, str]:
        return paths.dataset_files(self.dataset(dataset))

    def set_label(self, testset: str) -> str:
        """The column label of an evaluation set: 'roxford5k+r1m' -> 'ROxf+R1M'."""
        return "+".join(self.dataset(part).label for part in testset.split("+"))

    def has_images(self, testset: str) -> bool:
        return not self.dataset(paths.base_testset(testset)).descriptors

    def evaluable(self, testset: str, network: str) -> bool:
        """Whether a ranking of ``network`` ('net' or 'net~method') can be computed on ``testset``: a set given as
        descriptors has those of its networks only, and no images for a method that needs them (DSM)."""
        descriptors = dict(self.dataset(paths.base_testset(testset)).descriptors)
        if not descriptors:
            return True
        base, _, slug = network.partition("~")
        return base in descriptors and not (slug and registry.method(self.method_of_slug[slug]).needs_images)

    def imported_descriptors(self, dataset: str, network: str) -> str:
        """The configured descriptor file of a dataset given as descriptors (rule import_descriptors)."""
        descriptors = dict(self.dataset(dataset).descriptors)
        if network not in descriptors:
            raise ValueError(
                f"config key datasets.own.{dataset}.descriptors: no file for network {network!r} "
                f"(given: {', '.join(descriptors)})"
            )
        return descriptors[network]

    def dataset_kind(self, dataset: str) -> str:
        """The role of a dataset in this configuration, which tells the extraction what to read: a training or
        whitening set is read in its own layout (rSfM120k's train/val splits, or a whitening set's pairs), also
        when it only serves as the whitening set of a training set given as descriptors."""
        if dataset in self.test_sets:
            return "test"
        if dataset == self.distractors:
            return "distractors"
        return self.dataset(dataset).kind

    def demo_training_set(self) -> str | None:
        """The training set the demo generates (rule generate_demo_trainset): the registered one among the
        training and whitening sets; a training set of datasets.own is the user's, never generated."""
        used = dict.fromkeys([self.training_set, self.whitening_set])
        registered = [name for name in used if name not in self.own_datasets]
        return next((name for name in registered if self.dataset(name).kind == registry.TRAINING), None)

    def extract_inputs(self, dataset: str, network: str) -> dict[str, str]:
        inputs = self.raw_data(dataset)
        spec = self.networks[network]
        for key in ("checkpoint", "body_checkpoint"):
            if spec.get(key):
                inputs[key] = spec[key]
        if spec.get("post_whitening", "none") in ("centre", "learned") and dataset != self.whitening_set:
            # fitted by the whitening set's extraction job, stored in its descriptor file
            inputs["whitening"] = paths.features(self.whitening_set, network)
        return inputs

    def shard_range(self, shard: int) -> list[int]:
        """Rows [start, stop) of the distractor list that shard {shard} extracts."""
        if shard >= self.n_shards:
            raise ValueError(f"shard {shard} does not exist: {self.n_shards} shards")
        return [shard * self.shard_size, min((shard + 1) * self.shard_size, self.distractor_images)]

    def distractor_shards(self, network: str) -> list[str]:
        return [f"<results>/features/{self.distractors}/{network}/shard{i}.h5" for i in range(self.n_shards)]

    def descriptor_files(self, testset: str, network: str) -> dict[str, str]:
        """Descriptors of a test set's database and queries, then of the distractors when the set includes them."""
        network = paths.base_network(network)
        files = {"testset": paths.features(paths.base_testset(testset), network)}
        if "+" in testset:
            files["distractors"] = paths.features(self.distractors, network)
        return files

    def export_input(self, layout: str, network: str) -> str:
        return paths.features(self.export_layouts[layout], network)

    def unpacked_archives(self, image_folder: str) -> list[str]:
        """The unpacked archives that make up one downloaded image folder."""
        archives = self.downloads.image_folders[image_folder].archives
        return [f"<data>/{image_folder}.download/{archive}.unpacked" for archive in archives]

    def ground_truth(self, testset: str) -> str:
        return self.raw_data(paths.base_testset(testset))["listing"]

    def demo_seed(self, dataset: str) -> int:
        """Each demo test set has its own landmarks: its seed is the demo seed plus its position."""
        return self.config["demo"]["seed"] + 1 + self.test_sets.index(dataset)

    # -----------------------------------------------------------------------------------------------------------
    # CSA models
    def training_inputs(self, model: str) -> dict:
        networks = self.training_sets[self.models[model]["training_set"]]
        return {
            "db": self.raw_data(self.training_set)["listing"],
            "features": [paths.features(self.training_set, net) for net in networks],
            "neighbours": [paths.neighbours(net) for net in networks],
        }

    def training_priority(self, model: str) -> int:
        """The longest training first: one on the samples of n backbones takes about n times as long as one on a
        single backbone's, and would otherwise start last and end the run alone."""
        return len(self.training_sets[self.models[model]["training_set"]])

    def reranker_config(self, model: str) -> dict:
        """config["reranker"] with the model's anchor length and its variant's changes (figures)."""
        spec = self.models[model]
        return canonical({**self.config["reranker"], "anchors": spec["anchors"], **spec.get("reranker", {})})

    def training_hyperparameters(self, model: str) -> dict:
        """config["training"] with the model variant's changes (figures), without the process count, which does
        not change the result (no rerun trigger)."""
        settings = {key: value for key, value in self.config["training"].items() if key != "processes"}
        return canonical({**settings, **self.models[model].get("training", {})})

    def val_evaluation(self, model: str) -> str:
        """The evaluation of a model on the training set's val split (first-round network, K, L)."""
        return paths.val_evaluation(self.training_set, self.first_round, model, self.K, self.L)

    # -----------------------------------------------------------------------------------------------------------
    # compared methods (workflow/rules/methods.smk)
    def method_inputs(self, testset: str, network: str, slug: str) -> dict[str, str]:
        entry = registry.method(self.method_of_slug[slug])
        inputs = {**self.descriptor_files(testset, network), "knn": paths.knn(testset, network)}
        if entry.fitted_by:
            inputs["weights"] = f"<results>/methods/{entry.fitted_by}/{network}.pt"
        if entry.graph:
            inputs["graph"] = paths.graph(testset, network)
        if entry.needs_images:  # the images and the network, at re-ranking time
            data = self.raw_data(paths.base_testset(testset))
            inputs.update(images=data["images"], gnd=data["listing"])
            spec = self.networks[network]
            for key in ("checkpoint", "body_checkpoint"):
                if spec.get(key):
                    inputs[key] = spec[key]
            if "+" in testset:
                distractors = self.raw_data(self.distractors)
                inputs.update(distractor_images=distractors["images"], distractor_list=distractors["listing"])
        return inputs

    def _graph_widths(self) -> tuple[int, int]:
        """(near, far): the most columns of the database graph any configured method reads (its parameters over
        its function's defaults, read from the source: :func:`.checks.keyword_defaults`)."""
        near = far = 0
        for label, settings in self.methods.items():
            entry = registry.method(label)
            if not entry.graph:
                continue
            params = checks.keyword_defaults(entry.module, entry.function.partition(":")[2]) or {}
            params = params | {key: value for key, value in settings.items() if key != "fit"}
            if entry.fitted_by:
                fit = checks.keyword_defaults(f"csa_rerank.methods.{entry.fitted_by}", "fit") or {}
                params |= {f"fit.{key}": value for key, value in (fit | self.fit_settings(entry.fitted_by)).items()}
            method_near, method_far = entry.graph.widths(params)
            near, far = max(near, method_near), max(far, method_far)
        return near, far

    def method_gpus(self, slug: str) -> int:
        """GPUs a compared method's job requests: one for the methods that use it (registry ``gpu``)."""
        return int(registry.method(self.method_of_slug[slug]).gpu)

    def method_mem_mb(self, slug: str, input_mb: float, attempt: int) -> int:
        """Memory limit (MB) of a compared method's job on ``input_mb`` MB of input (:mod:`.resources`)."""
        return resources.mem_mb(self.method_of_slug[slug], input_mb, attempt)

    def method_runtime(self, slug: str, input_mb: float, attempt: int) -> int:
        """Time limit (minutes) of a compared method's job on ``input_mb`` MB of input (:mod:`.resources`)."""
        return resources.runtime(self.method_of_slug[slug], input_mb, attempt)

    def method_settings(self, slug: str) -> dict:
        """The method's keyword parameters (config methods.<label>, without its training parameters)."""
        return {key: value for key, value in self.methods[self.method_of_slug[slug]].items() if key != "fit"}

    def image_settings(self, slug: str, network: str) -> dict:
        """What a method that re-ranks with the images needs besides descriptors (DSM): the network's spec and the
        image size; other methods: nothing."""
        if not registry.method(self.method_of_slug[slug]).needs_images:
            return {}
        return canonical({"network": self.networks[network], "image_size": self.config["extraction"]["image_size"]})

    def fit_settings(self, module: str) -> dict:
        """The training parameters of a learned method's fit (config methods.<label>.fit of its first label)."""
        return self.methods.get(registry.fit_modules()[module], {}).get("fit", {})

    # -----------------------------------------------------------------------------------------------------------
    # tables, figures, targets
    def table_layout(self, table: str, resolve: Callable[[str], str] = _same) -> dict:
        """The layout of a table; ``resolve`` maps each cell's file (Snakemake: its pathvars resolved)."""
        layout = tables.table_layout(self, table)
        for row in layout["rows"]:
            _resolve(row["cells"], resolve)
        return layout

    def figure_layout(self, figure: str, resolve: Callable[[str], str] = _same) -> dict:
        layout = figures.figure_layout(self, figure)
        for cells in _figure_cells(layout):
            _resolve(cells, resolve)
        return layout

    def table_inputs(self, table: str, resolve: Callable[[str], str] = _same) -> list[str]:
        layout = self.table_layout(table, resolve)
        return sorted({cell["file"] for row in layout["rows"] for cell in row["cells"].values()})

    def figure_inputs(self, figure: str, resolve: Callable[[str], str] = _same) -> list[str]:
        layout = self.figure_layout(figure, resolve)
        return sorted({cell["file"] for cells in _figure_cells(layout) for cell in cells.values()})

    def tables_and_figures(self) -> list[str]:
        """Every table (CSV, Markdown) and figure (PNG, CSV): the inputs of the report."""
        return [f"<results>/{table}.{ext}" for table in self.tables for ext in ("csv", "md")] + [
            f"<results>/{figure}.{ext}" for figure in self.figures for ext in ("png", "csv")
        ]

    def report_inputs(self) -> list[str]:
        """What the report shows: the tables, the figures and the per-query analysis."""
        return self.tables_and_figures() + analysis.outputs(self)

    def all_targets(self) -> list[str]:
        return (
            [f"<results>/{table}.csv" for table in self.tables]
            + [f"<results>/{figure}.png" for figure in self.figures]
            + ["<results>/fig3.png", "<results>/report.html"]
        )

    # -----------------------------------------------------------------------------------------------------------
    # per-query analysis and Figure 3 (workflow/rules/analysis.smk)
    def per_query_inputs(self, testset: str) -> dict[str, str | list[str]]:
        return analysis.per_query_inputs(self, testset)

    def per_query_rows(self, testset: str) -> dict[str, str]:
        return analysis.per_query_rows(self, testset)

    def qualitative_inputs(self, testset: str) -> dict[str, str]:
        return analysis.qualitative_inputs(self, testset)

    def fig3_method(self) -> str:
        return analysis.method_label(self)


def _in_paper_order(table: str, rows: dict) -> dict:
    return {label: rows[label] for label in tables.paper_order(table, rows)}


def _resolve(cells: dict, resolve: Callable[[str], str]) -> None:
    for cell in cells.values():
        cell["file"] = resolve(cell["file"])


def _figure_cells(layout: dict) -> list[dict]:
    """The cells of a figure layout: the baseline's, then every point's."""
    return [layout["baseline"]["cells"]] + [point["cells"] for panel in layout["panels"] for point in panel["points"]]
