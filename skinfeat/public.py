"""The names ``import skinfeat`` offers (the package's ``__all__``), in one list that both the
package and ``skinfeat.api`` read, so neither imports the other for it."""

PUBLIC = ("AuditResult", "CVResult", "CompareResult", "Dataset", "DatasetSpec", "EmbeddingCache",
          "EnsembleConfig", "EvaluationResult", "FitResult", "FusionHeadClassifier", "HeadConfig",
          "ImagePrediction", "LGBMConfig", "LinearConfig", "Model", "Predictions", "Recipe",
          "RunConfig", "RunSummary", "SkinfeatError", "StageTwoModel", "Task", "TuneResult",
          "audit", "backbones", "check_dataset", "compare", "cross_validate", "default_models",
          "download_ham10000",
          "drop_label_issues", "evaluate_model", "extract", "fit", "load_dataset", "load_model",
          "make_recipe", "merge_caches", "merge_duplicate_groups", "model_configs", "model_names",
          "open_cache", "register_model", "run_demo", "serve", "settle_crossing_groups", "tune",
          "unpack", "weights_location", "write_card", "__version__")
