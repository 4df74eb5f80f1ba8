"""The migrations: one file per kind of move, each in resumable named phases with a record.

=============  =======================================================================
file           what it moves
=============  =======================================================================
``stack``      the whole stack to another server or provider (``mlox-iac migrate --to``)
``objects``    every declared bucket between SeaweedFS and an external S3 store
               (``mlox-iac migrate --part objects --to external|local``)
``postgres``   every declared database between the server's Postgres and an external
               server (``mlox-iac migrate --part postgres --to external|local``)
=============  =======================================================================

All of them are built on the data modules that backup and restore use (``mlox_iac/data``:
capture, restore, verify by checksum manifest), run on the server over SSH; the phases and
their record for the part moves are shared (``parts.py``).
"""
