"""The lifecycle as a service, over the store and the ML core: files, fine-tuning jobs, workers.

`files` (uploads, validation), `jobs` (create and manage jobs in OpenAI's shapes), `worker`
(claims jobs and runs `tunery train` for them), `webhooks` (signed job notifications). Importing
this package loads no torch.
"""
