"""Stage 2, prepared folder -> run folder: command line, config layers, start-up checks, data
loading and batching, the guarded Coqui Trainer, escalation, and the HiFi-GAN vocoder's training.
The commands are train_ruslan_glowtts.py and train_ruslan_hifigan.py."""
