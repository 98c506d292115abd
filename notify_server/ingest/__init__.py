"""Events on their way in: the job codec, arq's queue layout, event validation, the producer helpers."""
