/* Writes a YCCK JPEG (Adobe marker, transform 2) with libjpeg: the one kind of test image that
   Pillow cannot write. Used by make_golden.py; reads raw Adobe-inverted CMYK bytes (what Pillow's
   "CMYK" mode holds, inverted) from stdin.
     cc -O2 -o make_ycck make_ycck.c -ljpeg
     ./make_ycck WIDTH HEIGHT OUT.jpg < pixels.cmyk */
#include <stdio.h>
#include <stdlib.h>
#include <jpeglib.h>

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  int width = atoi(argv[1]), height = atoi(argv[2]);
  size_t size = (size_t)width * height * 4;
  unsigned char* pixels = malloc(size);
  if (!pixels || fread(pixels, 1, size, stdin) != size) return 1;
  FILE* out = fopen(argv[3], "wb");
  if (!out) return 1;
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, out);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = 4;
  cinfo.in_color_space = JCS_CMYK;
  jpeg_set_defaults(&cinfo);
  jpeg_set_colorspace(&cinfo, JCS_YCCK);
  jpeg_set_quality(&cinfo, 90, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = pixels + (size_t)cinfo.next_scanline * width * 4;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  fclose(out);
  free(pixels);
  return 0;
}
