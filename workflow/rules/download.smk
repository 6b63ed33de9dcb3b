# Downloads of the real datasets and networks into cirtorch's layout under <data> (docs/data.md).  One job per file
# and per archive; each archive (a temporary file in <image folder>.download/) is unpacked by its own job, and the
# unpacked parts are merged into the image folder, so a killed run loses at most one archive's unpacking (an
# interrupted download resumes from its .part file).  Downloads are local rules: cluster nodes often have no
# internet access.
#
# The jobs are one-line `run:` calls that look their source up in plan.downloads (the config's `downloads` section),
# not `script:` rules with params, on purpose: Snakemake reruns a script rule whose output is older than its
# script, and a job whose params changed, so a file placed by hand, or a switch of base URL to a mirror, would
# trigger a new download (and, through the file's new time stamp, new descriptors).  Here whatever is under
# <data> is final: delete it to fetch it again.  The demo generates its data: without `downloads`, or with a
# `demo` section, these rules do not exist.

if plan.downloads is not None:

    # rules only for the kinds of source configured: an empty wildcard constraint would match any path
    if plan.downloads.files:

        rule download_file:
            output:
                "<data>/{download}",
            log:
                "<logs>/download/{download}.log",
            wildcard_constraints:
                download=alternatives(plan.downloads.files),
            localrule: True
            run:
                download.download_file(
                    plan.downloads, wildcards.download, output[0], log[0]
                )

    if plan.downloads.image_folders:

        rule download_archive:
            output:
                temp("<data>/{image_folder}.download/{archive}"),
            log:
                "<logs>/download/{image_folder}/{archive}.log",
            wildcard_constraints:
                image_folder=alternatives(plan.downloads.image_folders),
                archive=alternatives(plan.downloads.archives),
            localrule: True
            run:
                download.download_archive(
                    plan.downloads, wildcards.archive, output[0], log[0]
                )

        rule unpack_archive:
            input:
                "<data>/{image_folder}.download/{archive}",
            output:
                temp(directory("<data>/{image_folder}.download/{archive}.unpacked")),
            log:
                "<logs>/unpack/{image_folder}/{archive}.log",
            wildcard_constraints:
                image_folder=alternatives(plan.downloads.image_folders),
                archive=alternatives(plan.downloads.archives),
            priority: 1  # before further downloads, so that each archive is deleted soon after it arrives
            resources:
                mem_mb=1024,
            run:
                download.unpack_archive(
                    plan.downloads,
                    wildcards.image_folder,
                    input[0],
                    output[0],
                    log[0],
                )

        rule assemble_image_folder:
            input:
                unpacked_archives,
            output:
                directory("<data>/{image_folder}"),
            log:
                "<logs>/unpack/{image_folder}.log",
            wildcard_constraints:
                image_folder=alternatives(plan.downloads.image_folders),
            resources:
                mem_mb=1024,
            run:
                download.assemble_folder(
                    plan.downloads, wildcards.image_folder, input, output[0], log[0]
                )

    # Everything configured, including what the configured experiments do not use (e.g. to fetch it all on a
    # machine with internet access, then copy <data> to one without): snakemake --cores 2 download_all
    rule download_all:
        input:
            expand(
                "<data>/{path}",
                path=[*plan.downloads.files, *plan.downloads.image_folders],
            ),
