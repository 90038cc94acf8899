"""`nemo-trt eval`: accuracy against the model card (pass@1 with confidence intervals and a drop test).

Data flows one way: dataset (JSONL) -> prompts (the card's templates) -> samples from the server
(Triton ensemble or the OpenAI gateway; answer part only) -> journal (resumable) -> grading
(math-verify, MCQ letters, exact match) -> statistics -> report (JSON, per-question JSON, JUnit).
"""
