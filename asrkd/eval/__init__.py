"""Evaluation: CTC search (:mod:`asrkd.eval.search`), decoding full or streaming
(:mod:`asrkd.eval.decode`), WER/CER scoring (:mod:`asrkd.eval.scoring`) and the recipe
report (:mod:`asrkd.eval.report`)."""
