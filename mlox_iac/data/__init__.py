"""The data a stack keeps, moved by one mechanism per kind: the base of backup, restore and migrate.

Every service declares its data in its own file (``Data`` in
``mlox_iac/components/services/base.py``): Postgres databases, buckets, volumes. Each kind
has one module here with the same three verbs, and nothing else in the project copies data:

=================  =====================================  ==========================================
module             capture (on the source server)         manifest (what ``verify`` compares)
=================  =====================================  ==========================================
``postgres``       ``pg_dump -Fc`` inside one exported    per table: row count and an MD5 over the
                   REPEATABLE READ snapshot, plus         sorted MD5s of its rows, computed in the
                   ``pg_dumpall --roles-only``            same snapshot as the dump
``objects``        ``rclone sync`` of the bucket into a   per object: key, size, SHA-256 (of the
                   staging directory kept between runs    staged copy; after restore, re-downloaded)
``volumes``        the volume's files as they are         per file: path, size, SHA-256
=================  =====================================  ==========================================

- ``capture(host, name, dest)`` writes the data under ``dest`` (a directory that
  becomes part of a restic snapshot, or is copied to another server) and returns its manifest.
- ``restore(host, name, src, manifest)`` puts it back on a running stack *without losing what
  is there until the copy is verified*: a database is restored into a scratch database,
  verified, then swapped in by rename (the old one is kept as ``<db>__mlox_before_restore``);
  a volume is restored beside the live one, verified, then swapped by rename (the old one kept
  as ``.<volume>.before-restore``); a bucket is synced with rclone's ``--backup-dir``, so
  objects it replaces or deletes move to the bucket ``mlox-before-restore``.
- ``verify(host, name, manifest)`` recomputes the manifest of what is live and returns the
  differences (an empty list means equal).

``backup.py`` composes these verbs with restic (one snapshot per run holding every service's
dumps, staged objects, volume files and ``manifest.json``); ``mlox-iac migrate`` is meant to
compose the same verbs between two servers. These modules run *on the server* with the
system's ``python3`` and the standard library only: the bundle ships them to
``/opt/mlox/bundle/backup/mlox_data/``; the tools they drive are pinned images (restic, rclone)
and the stack's own containers (``pg_dump`` inside the postgres container).
"""
